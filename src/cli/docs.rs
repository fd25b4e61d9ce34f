//! Shell completions and man pages, generated from the CLI definition (clap_complete,
//! clap_mangen) by the hidden `berthctl __generate DIR` that `make install` runs. Container
//! and image names complete from the bus: the bash and fish scripts call the hidden
//! `berthctl __complete containers|images|all`.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::{CliError, CliResult, Exit};

/// The verbs whose positional words are container names, and those taking image names.
const CONTAINER_VERBS: &str = "start stop kill remove rm restart pause unpause wait top status show set stats export rename console login";
const IMAGE_VERBS: &str = "rmi push save";
const IMAGE_SUBVERBS: &str = "show remove rm rename clone tag export push save";

/// berthd as a clap command: only for its man page (it takes no arguments).
pub fn berthd_command() -> clap::Command {
    clap::Command::new("berthd")
        .version(env!("CARGO_PKG_VERSION"))
        .about("The berth container manager (org.berth.berth1 on the system bus)")
        .long_about(
            "berthd serves org.berth.berth1 on the system bus and runs containers in transient \
             systemd scopes (berth-NAME.scope in machine.slice) with a delegated cgroup. It is \
             started by systemd (berthd.service, Type=notify) or by D-Bus activation, keeps \
             definitions in /var/lib/berth, runtime state in /run/berth, and may be restarted \
             at any time: containers keep running and are adopted again. Declarative \
             containers in /etc/berth/containers/NAME.toml are applied at start and on \
             `berthctl reload`. Registry credentials are read from /etc/berth/auth.json. \
             Logging goes to the journal; BERTH_LOG sets the level (error, warn, info, debug), \
             BERTH_HELPER the berth-helper binary. It takes no arguments; berthctl(1) drives it.",
        )
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::new(Exit::Failed, format!("{}: {e}", path.display()))
}

/// berthctl's whole command tree. Each verb's arguments are deferred (`#[command(defer)]`:
/// a run builds only its own verb's, which was a third of `berthctl exec`'s start), so the
/// generators get the tree built. (`help`'s own tree is then made before the verbs are:
/// completion stops at `berthctl help VERB`.)
fn full() -> clap::Command {
    let mut cmd = super::Cli::command();
    cmd.build();
    cmd
}

fn write(path: &Path, data: &[u8]) -> CliResult<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    std::fs::write(path, data).map_err(io(path))
}

/// The bash script: clap's, wrapped so that container and image names come from the bus.
pub fn bash() -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::Bash,
        &mut full(),
        "berthctl",
        &mut out,
    );
    let wrapper = format!(
        r#"
# Names from the bus (berthctl __complete), for the verbs that take them.
_berthctl_names() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" verb="" sub="" kind="" i w
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        [[ $w == -* ]] && continue
        if [[ -z $verb ]]; then verb=$w; elif [[ -z $sub ]]; then sub=$w; fi
    done
    if [[ -n $verb && $cur != -* ]]; then
        case " {CONTAINER_VERBS} " in *" $verb "*) kind=containers ;; esac
        case " {IMAGE_VERBS} " in *" $verb "*) kind=images ;; esac
        [[ $verb == inspect ]] && kind=all
        if [[ $verb == image && -n $sub ]]; then
            case " {IMAGE_SUBVERBS} " in *" $sub "*) kind=images ;; esac
        fi
    fi
    if [[ -n $kind ]]; then
        local IFS=$'\n'
        COMPREPLY=($(compgen -W "$(berthctl __complete $kind 2>/dev/null)" -- "$cur"))
        return 0
    fi
    _berthctl "$@"
}}
complete -F _berthctl_names -o nosort -o bashdefault -o default berthctl
"#
    );
    out.extend_from_slice(wrapper.as_bytes());
    out
}

fn fish() -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::Fish,
        &mut full(),
        "berthctl",
        &mut out,
    );
    let extra = format!(
        "\n# Names from the bus (berthctl __complete).\n\
         complete -c berthctl -n '__fish_seen_subcommand_from {CONTAINER_VERBS}' -f -a '(berthctl __complete containers)'\n\
         complete -c berthctl -n '__fish_seen_subcommand_from inspect' -f -a '(berthctl __complete all)'\n\
         complete -c berthctl -n '__fish_seen_subcommand_from {IMAGE_VERBS}' -f -a '(berthctl __complete images)'\n\
         complete -c berthctl -n '__fish_seen_subcommand_from image; and __fish_seen_subcommand_from {IMAGE_SUBVERBS}' -f -a '(berthctl __complete images)'\n"
    );
    out.extend_from_slice(extra.as_bytes());
    out
}

fn man(cmd: clap::Command, section: &str) -> CliResult<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("berth")
        .render(&mut out)
        .map_err(|e| CliError::new(Exit::Failed, format!("man page: {e}")))?;
    // Ragged right (`.ad l`): option syntax such as `type=bind|volume,source=…` is one long
    // word that justified text cannot fit without troff warning "cannot adjust line".
    let text = String::from_utf8_lossy(&out);
    let mut page = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive('\n') {
        page.push_str(line);
        if line.starts_with(".TH ") {
            page.push_str(".ad l\n");
        }
    }
    Ok(page.into_bytes())
}

/// Write `DIR/completions/{bash/berthctl,zsh/_berthctl,fish/berthctl.fish}` and
/// `DIR/man/{berthctl.1,berthctl-VERB.1…,berthd.8}`.
pub fn generate(dir: &str) -> CliResult {
    let dir = Path::new(dir);
    write(&dir.join("completions/bash/berthctl"), &bash())?;
    let mut zsh = Vec::new();
    clap_complete::generate(clap_complete::Shell::Zsh, &mut full(), "berthctl", &mut zsh);
    write(&dir.join("completions/zsh/_berthctl"), &zsh)?;
    write(&dir.join("completions/fish/berthctl.fish"), &fish())?;
    let cmd = full();
    write(&dir.join("man/berthctl.1"), &man(cmd.clone(), "1")?)?;
    // `help` is built in (a built tree has it): `berthctl --help` says it.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name: &'static str = Box::leak(format!("berthctl-{}", sub.get_name()).into_boxed_str());
        let page = man(
            sub.clone().name(name).display_name(name).bin_name(name),
            "1",
        )?;
        write(&dir.join(format!("man/{name}.1")), &page)?;
    }
    write(&dir.join("man/berthd.8"), &man(berthd_command(), "8")?)?;
    let mut stdout = std::io::stdout().lock();
    if writeln!(
        stdout,
        "wrote completions and man pages to {}",
        dir.display()
    )
    .is_err()
    {
        // A closed stdout does not undo the files.
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_and_pages_are_generated() {
        let b = String::from_utf8(bash()).unwrap();
        assert!(b.contains("_berthctl_names"), "{b}");
        assert!(b.contains("berthctl __complete"));
        let f = String::from_utf8(fish()).unwrap();
        assert!(f.contains("__complete containers"));
        let m = String::from_utf8(man(full(), "1").unwrap()).unwrap();
        assert!(m.contains(".TH berthctl 1"), "{}", &m[..200.min(m.len())]);
        assert!(m.contains("\n.ad l\n"), "not ragged right");
        assert!(m.contains("ps"));
        let d = String::from_utf8(man(berthd_command(), "8").unwrap()).unwrap();
        assert!(d.contains(".TH berthd 8"));
    }
}
