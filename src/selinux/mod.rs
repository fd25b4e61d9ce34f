//! SELinux: each container's processes run as `container_t` and its files are
//! `container_file_t`, both at a level with a category pair no other container has (sVirt /
//! MCS separation, as podman and libvirt do it).
//!
//! berthd plans: [`state`] says whether SELinux is on; [`ContainerContexts::load`] reads the
//! policy's container types; [`LabelOpts::parse`] takes `--security-opt label=…`;
//! [`McsAllocator`] hands out the pair; [`plan_labels`] puts them together into [`Labels`],
//! or `None` when no label applies. The helper applies: [`mount_option`] on the container's
//! overlay, tmpfs and devpts mounts, and [`apply_exec_label`] just before `execve`.
//!
//! When SELinux is off (no selinuxfs at `/sys/fs/selinux`, or no `enforce` file in it) berth
//! applies no label at all: the `context=` mount option and `/proc/…/attr/exec` would then be
//! refused, or reach another security module that owns the same files.

mod context;
mod level;
mod mcs;

pub use context::{
    ContainerContexts, Context, LabelOpts, Labels, check_identifier, lxc_contexts_path,
    mount_option,
};
pub use level::{Level, MAX_CATEGORY, MAX_SENSITIVITY, PAIRS, Pair};
pub use mcs::{McsAllocator, STATE_FILE};

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SelinuxError {
    #[error("invalid SELinux level: {0}")]
    Level(String),
    #[error("invalid MCS category pair: {0}")]
    Pair(String),
    #[error("invalid SELinux context: {0}")]
    Context(String),
    #[error("invalid --security-opt {0}")]
    LabelOpt(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is damaged ({reason}); rebuild it from the containers' records", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("all {PAIRS} MCS category pairs are in use")]
    Exhausted,
    #[error("{owner} already holds the MCS pair {had}")]
    OwnerHasPair { owner: String, had: Pair },
    #[error("container {owner} is recorded with two MCS pairs, {had} and {pair}")]
    RebuildConflict {
        owner: String,
        had: Pair,
        pair: Pair,
    },
}

/// Where selinuxfs is mounted when SELinux is on.
pub const SELINUXFS: &str = "/sys/fs/selinux";
/// The calling thread's exec label (legacy attribute file, owned by SELinux when it is on).
pub const EXEC_ATTR: &str = "/proc/thread-self/attr/exec";

/// Whether SELinux is on, and enforcing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelinuxState {
    /// Not compiled in, disabled at boot, or selinuxfs not mounted: berth applies no label.
    Disabled,
    /// Labels are applied; denials are logged, not enforced.
    Permissive,
    /// Labels are applied and enforced.
    Enforcing,
}

impl SelinuxState {
    /// Whether containers get labels.
    pub fn labels(self) -> bool {
        self != SelinuxState::Disabled
    }
}

impl fmt::Display for SelinuxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SelinuxState::Disabled => "disabled",
            SelinuxState::Permissive => "permissive",
            SelinuxState::Enforcing => "enforcing",
        })
    }
}

/// The state of this host, from `/sys/fs/selinux/enforce`.
pub fn state() -> SelinuxState {
    state_at(Path::new(SELINUXFS))
}

/// The state from the `enforce` file of a selinuxfs mounted at `selinuxfs` (a fixture directory
/// in tests): missing → disabled; `0` → permissive; `1` → enforcing. When the file exists but
/// cannot be read or holds something else, SELinux is on, so this says enforcing: applying a
/// label where it was not needed is harmless, leaving one out is not.
pub fn state_at(selinuxfs: &Path) -> SelinuxState {
    match std::fs::read_to_string(selinuxfs.join("enforce")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SelinuxState::Disabled,
        Ok(text) if text.trim() == "0" => SelinuxState::Permissive,
        _ => SelinuxState::Enforcing,
    }
}

/// The labels of a container, or `None` when none applies (SELinux off, or `label=disable`).
/// The level is `opts.level` (whose pair, if it is one, is reserved for `owner`) or `owner`'s
/// allocated pair (allocated now unless it has one: calling this again is harmless).
pub fn plan_labels(
    state: SelinuxState,
    contexts: &ContainerContexts,
    opts: &LabelOpts,
    alloc: &mut McsAllocator,
    owner: &str,
) -> Result<Option<Labels>, SelinuxError> {
    if !state.labels() || opts.disable {
        return Ok(None);
    }
    let level = match opts.level {
        Some(level) => {
            if let Some(pair) = level.pair() {
                alloc.reserve(owner, pair)?;
            }
            level
        }
        None => Level::of_pair(alloc.allocate(owner)?),
    };
    Ok(Some(Labels::compute(contexts, opts, &level)))
}

/// Set the label the calling thread's next `execve` runs under (`None`: no label, nothing is
/// written). Call it last before seccomp and exec: the label takes effect at exec, and the
/// kernel resets it after. With `no_new_privs` set, the transition needs the policy's
/// `process2 nnp_transition` permission (`policy/selinux/berth.te` grants it).
pub fn apply_exec_label(label: Option<&str>) -> std::io::Result<()> {
    apply_exec_label_at(Path::new(EXEC_ATTR), label)
}

/// [`apply_exec_label`] on another attribute file (a fixture in tests).
pub fn apply_exec_label_at(attr: &Path, label: Option<&str>) -> std::io::Result<()> {
    let Some(label) = label else {
        return Ok(());
    };
    let mut file = std::fs::OpenOptions::new().write(true).open(attr)?;
    // The kernel takes the whole label in one write(2); a short write would set a truncated
    // label, so it is an error rather than something to continue.
    let n = file.write(label.as_bytes())?;
    if n != label.len() {
        return Err(std::io::Error::other(format!(
            "{}: short write of the exec label ({n} of {} bytes)",
            attr.display(),
            label.len()
        )));
    }
    Ok(())
}

/// Whether the loaded policy knows `context`: selinuxfs's `context` file refuses an unknown
/// user, role, type or level with `EINVAL`. berthd can check the process and file labels
/// once at start (e.g. a policy without any container module has no `container_t`) and say
/// so, instead of failing every container start at `execve`.
pub fn context_is_valid(selinuxfs: &Path, context: &str) -> std::io::Result<bool> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(selinuxfs.join("context"))?;
    match file.write(context.as_bytes()) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The calling thread's current label (`/proc/thread-self/attr/current`), for probes that
/// check from inside a container that the label took effect.
pub fn current_label() -> std::io::Result<String> {
    let text = std::fs::read_to_string("/proc/thread-self/attr/current")?;
    Ok(text.trim_end_matches(['\0', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_from_fixture_dirs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(state_at(dir.path()), SelinuxState::Disabled);
        assert_eq!(
            state_at(&dir.path().join("not-mounted")),
            SelinuxState::Disabled
        );
        std::fs::write(dir.path().join("enforce"), "0").unwrap();
        assert_eq!(state_at(dir.path()), SelinuxState::Permissive);
        std::fs::write(dir.path().join("enforce"), "1").unwrap();
        assert_eq!(state_at(dir.path()), SelinuxState::Enforcing);
        std::fs::write(dir.path().join("enforce"), "garbage").unwrap();
        assert_eq!(state_at(dir.path()), SelinuxState::Enforcing);
        assert!(!SelinuxState::Disabled.labels() && SelinuxState::Permissive.labels());
    }

    /// The real probe agrees with selinuxfs (on this development host: compiled in, not
    /// active, so disabled — what berthd will log).
    #[test]
    fn state_of_this_host_matches_selinuxfs() {
        let mounted = Path::new("/sys/fs/selinux/enforce").exists();
        assert_eq!(state() != SelinuxState::Disabled, mounted, "{}", state());
    }

    #[test]
    fn exec_label_writes_the_label_once_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let attr = dir.path().join("exec");
        // None never opens the file (it does not even exist).
        apply_exec_label_at(&attr, None).unwrap();
        assert!(!attr.exists());
        std::fs::write(&attr, "").unwrap();
        let label = "system_u:system_r:container_t:s0:c1,c2";
        apply_exec_label_at(&attr, Some(label)).unwrap();
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), label);
        // Missing attribute file: the error is returned, not swallowed.
        let err = apply_exec_label_at(&dir.path().join("missing"), Some(label)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn context_check_on_fixture_selinuxfs() {
        let dir = tempfile::tempdir().unwrap();
        let err = context_is_valid(dir.path(), "system_u:system_r:container_t:s0").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        std::fs::write(dir.path().join("context"), "").unwrap();
        assert!(context_is_valid(dir.path(), "system_u:system_r:container_t:s0").unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("context")).unwrap(),
            "system_u:system_r:container_t:s0"
        );
    }

    #[test]
    fn plan_labels_allocates_reserves_or_skips() {
        let dir = tempfile::tempdir().unwrap();
        let mut alloc = McsAllocator::open(dir.path()).unwrap();
        let ctx = ContainerContexts::default();
        let none = LabelOpts::default();
        let plan = |s, o: &LabelOpts, a: &mut McsAllocator, id| plan_labels(s, &ctx, o, a, id);

        assert_eq!(
            plan(SelinuxState::Disabled, &none, &mut alloc, "a").unwrap(),
            None
        );
        assert!(alloc.is_empty(), "nothing allocated while SELinux is off");
        let disabled = LabelOpts::parse(&["disable"]).unwrap();
        assert_eq!(
            plan(SelinuxState::Enforcing, &disabled, &mut alloc, "a").unwrap(),
            None
        );

        let a = plan(SelinuxState::Enforcing, &none, &mut alloc, "a")
            .unwrap()
            .unwrap();
        assert_eq!(a.process, "system_u:system_r:container_t:s0:c0,c1");
        assert_eq!(a.file, "system_u:object_r:container_file_t:s0:c0,c1");
        let again = plan(SelinuxState::Permissive, &none, &mut alloc, "a").unwrap();
        assert_eq!(again, Some(a));

        // An explicit pair is reserved, so automatic allocation steps over it.
        let explicit = LabelOpts::parse(&["level:s0:c0,c2"]).unwrap();
        let b = plan(SelinuxState::Enforcing, &explicit, &mut alloc, "b")
            .unwrap()
            .unwrap();
        assert_eq!(b.process, "system_u:system_r:container_t:s0:c0,c2");
        assert_eq!(alloc.get("b"), Some(Pair::new(0, 2).unwrap()));
        let c = plan(SelinuxState::Enforcing, &none, &mut alloc, "c")
            .unwrap()
            .unwrap();
        assert_eq!(c.process, "system_u:system_r:container_t:s0:c1,c2");
        // An explicit level that is not a pair is used as given and reserves nothing.
        let wide = LabelOpts::parse(&["level:s0:c0.c1023"]).unwrap();
        let d = plan(SelinuxState::Enforcing, &wide, &mut alloc, "d")
            .unwrap()
            .unwrap();
        assert_eq!(d.file, "system_u:object_r:container_file_t:s0:c0.c1023");
        assert_eq!(alloc.get("d"), None);
    }
}
