//! Plans for working inside a running container, decided in berthd like a start's [`Plan`]:
//! an exec ([`ExecPlan`]: a command in all of the container's namespaces, its cgroup, with the
//! payload's identity, capabilities, no_new_privs, label and seccomp filter) and a live bind
//! mount ([`BindPlan`]).
//!
//! What a caller asks for ([`ExecRequest`]) is checked here, once: argv (an absolute program
//! path, or a name searched in the container's `PATH` — never a relative path, which would
//! resolve against a working directory the container controls), `KEY=VALUE` environment,
//! an absolute working directory, a user spec, all within the bounds a definition has.

use std::path::PathBuf;

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::{Plan, ProcessPlan, SecurityPlan};
use crate::ns::Namespaces;
use crate::spec::{self, SpecError, UserSpec};

/// Why an exec request is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExecError {
    #[error("no command given")]
    NoCommand,
    #[error("the program {0:?} is neither an absolute path nor a name to search in PATH")]
    RelativeProgram(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// A checked exec request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    /// Empty with `shell`: the user's login shell.
    pub argv: Vec<String>,
    /// `KEY=VALUE`, over the container's environment.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<UserSpec>,
    /// Run the user's shell from the container's /etc/passwd (else /bin/sh) as a login shell.
    pub shell: bool,
    /// Which of stdin, stdout, stderr are the terminal the helper allocates.
    pub terminal: [bool; 3],
    /// Which of stdin, stdout, stderr the caller passed (the others: the container's
    /// /dev/null, unless the terminal).
    pub passed: [bool; 3],
    /// The terminal's first size (rows, columns).
    pub window: Option<(u16, u16)>,
}

impl ExecRequest {
    /// Check what a caller sent.
    pub fn check(
        argv: Vec<String>,
        env: Vec<String>,
        workdir: Option<String>,
        user: Option<&str>,
        shell: bool,
    ) -> Result<ExecRequest, ExecError> {
        if !shell {
            let Some(prog) = argv.first() else {
                return Err(ExecError::NoCommand);
            };
            if prog.contains('/') && !prog.starts_with('/') {
                return Err(ExecError::RelativeProgram(prog.clone()));
            }
        }
        spec::check_command(&argv)?;
        spec::check_env(&env)?;
        if let Some(w) = &workdir
            && (!w.starts_with('/') || w.contains('\0') || w.len() > 4096)
        {
            return Err(SpecError::Workdir(w.clone()).into());
        }
        let user = user
            .map(UserSpec::parse)
            .transpose()
            .map_err(SpecError::from)?;
        Ok(ExecRequest {
            argv,
            env,
            workdir,
            user,
            shell,
            ..Default::default()
        })
    }
}

/// Everything the helper needs to run a command in a running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecPlan {
    /// Container name, for messages.
    pub name: String,
    /// The namespaces to join: the container's.
    pub namespaces: Namespaces,
    /// The files the helper writes `0` into to join the leader's cgroups — every v1
    /// hierarchy's `tasks` (see [`crate::cgroup::membership`]), and cgroup2's `cgroup.procs`
    /// only when berthd could not start the helper inside — before the namespaces, while the
    /// helper still sees the host's cgroup filesystems.
    pub cgroup_joins: Vec<PathBuf>,
    /// The request carries the leader's cgroup2 directory (after the leader's pidfd): the
    /// helper first forks itself into it (`CLONE_INTO_CGROUP`, no migration, so none of the
    /// kernel's global cgroup lock), and that child goes on.
    #[serde(default)]
    pub into_cgroup: bool,
    pub process: ProcessPlan,
    pub security: SecurityPlan,
    /// Which standard streams travel with the request.
    pub passed: [bool; 3],
    /// Run the user's login shell instead of `process.argv`.
    pub shell: bool,
}

impl ExecPlan {
    /// The `setns(2)` flags that join all of the container's namespaces at once.
    pub fn join_flags(&self) -> CloneFlags {
        let ns = &self.namespaces;
        let mut f = ns.at_clone() | ns.in_scope();
        if !ns.user {
            f.remove(CloneFlags::CLONE_NEWUSER);
        }
        f
    }
}

/// What an exec inherits from the container's start: its environment before `HOME` was
/// decided, and the rest of its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecBase {
    pub name: String,
    /// The payload's environment as [`super::environment`] made it (no `HOME` added yet).
    pub env: Vec<String>,
    pub process: ProcessPlan,
    pub security: SecurityPlan,
    pub namespaces: Namespaces,
}

/// Set `kv` in `env`: a later `KEY=` replaces an earlier one; `container=` stays berth's.
fn set(env: &mut Vec<String>, kv: &str) {
    let key = kv.split_once('=').map_or(kv, |(k, _)| k);
    if key.is_empty() || key == "container" {
        return;
    }
    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
    env.push(kv.to_string());
}

impl ExecBase {
    /// The base of execs into a container started with `plan`, whose environment before
    /// `HOME` was `env`.
    pub fn of(plan: &Plan, env: Vec<String>) -> ExecBase {
        ExecBase {
            name: plan.name.clone(),
            env,
            process: plan.process.clone(),
            security: plan.security.clone(),
            namespaces: plan.namespaces,
        }
    }

    /// The plan of one exec: the container's environment with the request's on top, its
    /// working directory and user unless the request names others, the payload's limits and
    /// confinement; no terminal unless asked.
    pub fn plan(&self, req: &ExecRequest, cgroup_joins: Vec<PathBuf>) -> ExecPlan {
        let mut env = self.env.clone();
        // `container=berth` last, where the payload has it.
        env.retain(|e| !e.starts_with("container="));
        for kv in &req.env {
            set(&mut env, kv);
        }
        let user = req.user.clone().or_else(|| self.process.user.clone());
        // The same rule as a start: an explicit HOME wins; root gets /root; anyone else the
        // home directory of their passwd entry, else /.
        let home = if env.iter().any(|e| e.starts_with("HOME=")) {
            None
        } else {
            match &user {
                Some(u) if !u.is_root() => Some("/".to_string()),
                _ => {
                    env.push("HOME=/root".into());
                    None
                }
            }
        };
        env.push("container=berth".into());
        ExecPlan {
            name: self.name.clone(),
            namespaces: self.namespaces,
            cgroup_joins,
            into_cgroup: false,
            process: ProcessPlan {
                argv: req.argv.clone(),
                env,
                workdir: req
                    .workdir
                    .clone()
                    .unwrap_or_else(|| self.process.workdir.clone()),
                user,
                home,
                rlimits: self.process.rlimits.clone(),
                terminal: req.terminal,
                window: req.window,
                boot: false,
            },
            security: self.security.clone(),
            passed: req.passed,
            shell: req.shell,
        }
    }
}

/// A live bind mount into a running container (`berthctl bind`): where, and how the mount
/// point is made when missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindPlan {
    pub name: String,
    /// Absolute, checked ([`crate::volume::ContainerPath`]).
    pub target: String,
    /// The source is a directory (else a file).
    pub dir: bool,
    /// Make the mount point (and its parents) when missing.
    pub mkdir: bool,
    /// Who owns what is made: the container's root as the host sees it.
    pub owner: Option<(u32, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ExecBase {
        let plan = crate::plan::tests::sample();
        ExecBase::of(
            &plan,
            vec![
                "PATH=/usr/bin:/bin".into(),
                "A=1".into(),
                "container=berth".into(),
            ],
        )
    }

    #[test]
    fn requests_are_checked_once() {
        let ok = ExecRequest::check(vec!["ls".into(), "-l".into()], vec![], None, None, false);
        assert!(ok.is_ok());
        let abs = ExecRequest::check(vec!["/bin/true".into()], vec![], None, Some("1000"), false)
            .unwrap();
        assert_eq!(abs.user, Some(UserSpec::parse("1000").unwrap()));
        assert_eq!(
            ExecRequest::check(vec![], vec![], None, None, false),
            Err(ExecError::NoCommand)
        );
        assert!(ExecRequest::check(vec![], vec![], None, None, true).is_ok());
        assert!(matches!(
            ExecRequest::check(vec!["bin/true".into()], vec![], None, None, false),
            Err(ExecError::RelativeProgram(_))
        ));
        for (env, wd, user) in [
            (vec!["NOEQUALS".to_string()], None, None),
            (vec![], Some("rel".to_string()), None),
            (vec![], None, Some("a/b")),
        ] {
            assert!(
                matches!(
                    ExecRequest::check(vec!["true".into()], env, wd, user, false),
                    Err(ExecError::Spec(_))
                ),
                "{user:?}"
            );
        }
        let long = vec!["x".repeat(spec::MAX_ARGV_BYTES + 1)];
        assert!(ExecRequest::check(long, vec![], None, None, false).is_err());
    }

    #[test]
    fn an_exec_gets_the_containers_environment_and_confinement() {
        let req = ExecRequest {
            argv: vec!["env".into()],
            env: vec!["A=2".into(), "B=3".into(), "container=other".into()],
            ..Default::default()
        };
        let p = base().plan(&req, vec!["/sys/fs/cgroup/x/cgroup.procs".into()]);
        assert_eq!(
            p.process.env,
            [
                "PATH=/usr/bin:/bin",
                "A=2",
                "B=3",
                "HOME=/root",
                "container=berth"
            ]
        );
        assert_eq!(p.process.workdir, "/");
        assert_eq!(p.security, crate::plan::tests::sample().security);
        assert!(p.join_flags().contains(
            CloneFlags::CLONE_NEWUSER
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWCGROUP
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
        ));
        // Another user gets their passwd home, not root's.
        let req = ExecRequest {
            argv: vec!["id".into()],
            user: Some(UserSpec::parse("1000").unwrap()),
            workdir: Some("/tmp".into()),
            ..Default::default()
        };
        let p = base().plan(&req, vec![]);
        assert!(!p.process.env.iter().any(|e| e.starts_with("HOME=")));
        assert_eq!(p.process.home.as_deref(), Some("/"));
        assert_eq!(p.process.workdir, "/tmp");
        let mut b = base();
        b.namespaces.user = false;
        assert!(
            !b.plan(&req, vec![])
                .join_flags()
                .contains(CloneFlags::CLONE_NEWUSER)
        );
    }
}
