//! Security contexts: the policy's container types (`lxc_contexts`), `--security-opt label=…`,
//! and the two labels of a container.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SelinuxError;
use super::level::Level;

/// The user, role and type of a context; the level is the container's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub user: String,
    pub role: String,
    pub type_: String,
}

/// SELinux identifiers (users, roles, types) as checkpolicy accepts them: a letter, then
/// letters, digits, `_`, `-` or `.`. This also keeps `:`, `"`, `,` and white space out of
/// labels, which matters in a mount option string.
pub fn check_identifier(what: &str, s: &str) -> Result<(), SelinuxError> {
    let ok = s.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SelinuxError::Context(format!(
            "{what} {s:?} is not an SELinux identifier (a letter, then letters, digits, '_', '-' or '.')"
        )))
    }
}

impl Context {
    /// `user:role:type` or `user:role:type:level`; the level, if any, is ignored (it is
    /// replaced by the container's) but must not be empty.
    pub fn parse(s: &str) -> Result<Context, SelinuxError> {
        let mut parts = s.splitn(4, ':');
        let (Some(user), Some(role), Some(type_)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SelinuxError::Context(format!(
                "{s:?} is not a context (user:role:type:level)"
            )));
        };
        if parts.next() == Some("") {
            return Err(SelinuxError::Context(format!("{s:?} has an empty level")));
        }
        check_identifier("user", user)?;
        check_identifier("role", role)?;
        check_identifier("type", type_)?;
        Ok(Context {
            user: user.into(),
            role: role.into(),
            type_: type_.into(),
        })
    }

    /// `user:role:type:level`.
    pub fn with_level(&self, level: &Level) -> String {
        format!("{}:{}:{}:{level}", self.user, self.role, self.type_)
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.user, self.role, self.type_)
    }
}

/// The container contexts of the loaded policy, from its `lxc_contexts` file, with the
/// container-selinux / refpolicy types as defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerContexts {
    /// `process`: the domain of the container's processes (`container_t`).
    pub process: Context,
    /// `file`: the type of the container's writable files and mounts (`container_file_t`).
    pub file: Context,
    /// `ro_file`: read-only content shared between containers (`container_ro_file_t`).
    pub ro_file: Context,
    /// Every key of the file as written (`content`, `sandbox_kvm_process`, …), last one wins.
    pub all: BTreeMap<String, String>,
    /// Where the values came from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
}

impl Default for ContainerContexts {
    fn default() -> Self {
        let ctx = |user: &str, role: &str, type_: &str| Context {
            user: user.into(),
            role: role.into(),
            type_: type_.into(),
        };
        ContainerContexts {
            process: ctx("system_u", "system_r", "container_t"),
            file: ctx("system_u", "object_r", "container_file_t"),
            ro_file: ctx("system_u", "object_r", "container_ro_file_t"),
            all: BTreeMap::new(),
            source: None,
        }
    }
}

/// Strip a trailing comment and surrounding white space; unquote `"value"`.
fn value_of(raw: &str) -> &str {
    let v = raw.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

impl ContainerContexts {
    /// Parse the text of an `lxc_contexts` file: `key = "context"` lines, `#` comments, blank
    /// lines. Keys that are missing keep their defaults; a line without `=` or a malformed
    /// `process`/`file`/`ro_file` value is an error naming the line, since a half-read policy
    /// file must not silently give containers the wrong type.
    pub fn parse(text: &str, source: Option<PathBuf>) -> Result<ContainerContexts, SelinuxError> {
        let mut out = ContainerContexts {
            source: source.clone(),
            ..Default::default()
        };
        let place = source
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "lxc_contexts".into());
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| SelinuxError::Context(format!("{place}:{}: {why}", n + 1));
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("{line:?} is not key = value")))?;
            let (key, value) = (key.trim(), value_of(value));
            let parsed = || Context::parse(value).map_err(|e| bad(e.to_string()));
            match key {
                "process" => out.process = parsed()?,
                "file" => out.file = parsed()?,
                "ro_file" => out.ro_file = parsed()?,
                _ => {}
            }
            out.all.insert(key.to_string(), value.to_string());
        }
        Ok(out)
    }

    /// The contexts of the policy configured under `root` (`/` on a real host):
    /// `<root>/etc/selinux/<SELINUXTYPE>/contexts/lxc_contexts`, with `SELINUXTYPE` from
    /// `<root>/etc/selinux/config`. Without either file, the defaults.
    pub fn load(root: &Path) -> Result<ContainerContexts, SelinuxError> {
        let Some(path) = lxc_contexts_path(root)? else {
            return Ok(ContainerContexts::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => ContainerContexts::parse(&text, Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ContainerContexts::default()),
            Err(source) => Err(SelinuxError::Io { path, source }),
        }
    }
}

/// `<root>/etc/selinux/<SELINUXTYPE>/contexts/lxc_contexts`, or `None` when the config file
/// or its `SELINUXTYPE` line is missing.
pub fn lxc_contexts_path(root: &Path) -> Result<Option<PathBuf>, SelinuxError> {
    let config = root.join("etc/selinux/config");
    let text = match std::fs::read_to_string(&config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SelinuxError::Io {
                path: config,
                source,
            });
        }
    };
    let Some(policy) = text.lines().find_map(|l| {
        let (k, v) = l.split('#').next()?.split_once('=')?;
        (k.trim() == "SELINUXTYPE").then(|| value_of(v).to_string())
    }) else {
        return Ok(None);
    };
    if policy.is_empty() || policy.contains('/') || policy.starts_with('.') {
        return Err(SelinuxError::Context(format!(
            "{}: SELINUXTYPE={policy:?} is not a policy name",
            config.display()
        )));
    }
    Ok(Some(
        root.join("etc/selinux")
            .join(policy)
            .join("contexts/lxc_contexts"),
    ))
}

/// The `--security-opt label=…` choices of one container, as podman accepts them:
/// `disable`, `user:U`, `role:R`, `type:T`, `level:L`, `filetype:T`. `user` and `level` apply
/// to both labels, `role` and `type` to the process label, `filetype` to the file label.
/// (`nested` is refused: berth does not run container engines inside containers.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelOpts {
    /// `label=disable`: no label at all (the container runs in berthd's helper's domain,
    /// unconfined by the container policy — like podman's `label=disable`).
    pub disable: bool,
    pub user: Option<String>,
    pub role: Option<String>,
    pub type_: Option<String>,
    pub filetype: Option<String>,
    /// An explicit level instead of an allocated pair (e.g. to share files between two
    /// containers on purpose).
    pub level: Option<Level>,
}

impl LabelOpts {
    /// Parse the values that followed `label=` in each `--security-opt`. Unknown keys, a key
    /// given twice, and `disable` combined with anything else are errors.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<LabelOpts, SelinuxError> {
        let mut opts = LabelOpts::default();
        let mut others = false;
        for value in values {
            let value = value.as_ref();
            if value == "disable" {
                opts.disable = true;
                continue;
            }
            if value == "nested" || value.starts_with("nested:") {
                return Err(SelinuxError::LabelOpt(
                    "label=nested is not supported by berth".into(),
                ));
            }
            let (key, arg) = value.split_once(':').ok_or_else(|| {
                SelinuxError::LabelOpt(format!(
                    "label={value}: expected disable, user:, role:, type:, level: or filetype:"
                ))
            })?;
            let slot = match key {
                "user" => &mut opts.user,
                "role" => &mut opts.role,
                "type" => &mut opts.type_,
                "filetype" => &mut opts.filetype,
                "level" => {
                    if opts.level.is_some() {
                        return Err(SelinuxError::LabelOpt("label=level: given twice".into()));
                    }
                    opts.level = Some(arg.parse()?);
                    others = true;
                    continue;
                }
                _ => {
                    return Err(SelinuxError::LabelOpt(format!(
                        "label={value}: unknown key {key:?} (user, role, type, level, filetype, disable)"
                    )));
                }
            };
            if slot.is_some() {
                return Err(SelinuxError::LabelOpt(format!("label={key}: given twice")));
            }
            check_identifier(key, arg)?;
            *slot = Some(arg.to_string());
            others = true;
        }
        if opts.disable && others {
            return Err(SelinuxError::LabelOpt(
                "label=disable cannot be combined with other label options".into(),
            ));
        }
        Ok(opts)
    }
}

/// A container's two labels, full contexts with its level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    /// The exec label of its processes, e.g. `system_u:system_r:container_t:s0:c1,c2`.
    pub process: String,
    /// The `context=` of its overlay, tmpfs and devpts mounts, e.g.
    /// `system_u:object_r:container_file_t:s0:c1,c2`.
    pub file: String,
}

impl Labels {
    /// The labels from the policy's contexts, the container's options and its level (the
    /// allocated pair's, or `opts.level`). The identifiers in `opts` were checked by
    /// [`LabelOpts::parse`], so both strings are safe inside a mount option.
    pub fn compute(contexts: &ContainerContexts, opts: &LabelOpts, level: &Level) -> Labels {
        let pick =
            |opt: &Option<String>, default: &String| opt.clone().unwrap_or_else(|| default.clone());
        let process = Context {
            user: pick(&opts.user, &contexts.process.user),
            role: pick(&opts.role, &contexts.process.role),
            type_: pick(&opts.type_, &contexts.process.type_),
        };
        let file = Context {
            user: pick(&opts.user, &contexts.file.user),
            role: contexts.file.role.clone(),
            type_: pick(&opts.filetype, &contexts.file.type_),
        };
        Labels {
            process: process.with_level(level),
            file: file.with_level(level),
        }
    }
}

/// The mount option that gives every file of a mount `file_label`:
/// `context="system_u:object_r:container_file_t:s0:c1,c2"`. The quotes are required: without
/// them the commas of the level would split the option list.
pub fn mount_option(file_label: &str) -> String {
    debug_assert!(!file_label.contains('"'), "labels never contain quotes");
    format!("context=\"{file_label}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEDORA: &str = r#"process = "system_u:system_r:container_t:s0"
content = "system_u:object_r:virt_var_lib_t:s0"
file = "system_u:object_r:container_file_t:s0"
ro_file="system_u:object_r:container_ro_file_t:s0"
sandbox_kvm_process = "system_u:system_r:container_kvm_t:s0"
sandbox_kvm_process = "system_u:system_r:container_init_t:s0"
sandbox_lxc_process = "system_u:system_r:container_init_t:s0"
"#;

    fn level() -> Level {
        "s0:c1,c2".parse().unwrap()
    }

    #[test]
    fn lxc_contexts_fixture() {
        let c = ContainerContexts::parse(FEDORA, None).unwrap();
        assert_eq!(c.process.to_string(), "system_u:system_r:container_t");
        assert_eq!(c.file.to_string(), "system_u:object_r:container_file_t");
        assert_eq!(c.ro_file.type_, "container_ro_file_t");
        assert_eq!(
            c.all["sandbox_kvm_process"], "system_u:system_r:container_init_t:s0",
            "last one wins"
        );
        assert_eq!(c.all["content"], "system_u:object_r:virt_var_lib_t:s0");

        // Other types, comments, missing keys keep defaults.
        let c = ContainerContexts::parse(
            "# comment\n\n  process = \"u:r:my_t:s0-s0:c0.c1023\" # trailing\nfile=u:object_r:my_file_t\n",
            None,
        )
        .unwrap();
        assert_eq!(c.process.type_, "my_t");
        assert_eq!(c.file.type_, "my_file_t");
        assert_eq!(c.ro_file, ContainerContexts::default().ro_file);

        let err = ContainerContexts::parse("process = \"system_u:container_t\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lxc_contexts:1:") && err.contains("not a context"),
            "{err}"
        );
        let err = ContainerContexts::parse("\nfile\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lxc_contexts:2:"), "{err}");
        let err = ContainerContexts::parse("file = \"u:r:t,x:s0\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an SELinux identifier"), "{err}");
    }

    #[test]
    fn load_follows_selinuxtype() {
        let root = tempfile::tempdir().unwrap();
        // No config: defaults.
        assert_eq!(
            ContainerContexts::load(root.path()).unwrap(),
            ContainerContexts::default()
        );
        std::fs::create_dir_all(root.path().join("etc/selinux/targeted/contexts")).unwrap();
        std::fs::write(
            root.path().join("etc/selinux/config"),
            "# This file controls the state of SELinux\nSELINUX=enforcing\nSELINUXTYPE=targeted\n",
        )
        .unwrap();
        let path = root
            .path()
            .join("etc/selinux/targeted/contexts/lxc_contexts");
        assert_eq!(lxc_contexts_path(root.path()).unwrap(), Some(path.clone()));
        // Config but no lxc_contexts: defaults.
        assert_eq!(
            ContainerContexts::load(root.path()).unwrap().process.type_,
            "container_t"
        );
        std::fs::write(&path, FEDORA.replace("container_t:", "other_t:")).unwrap();
        let c = ContainerContexts::load(root.path()).unwrap();
        assert_eq!(c.process.type_, "other_t");
        assert_eq!(c.source, Some(path));

        std::fs::write(root.path().join("etc/selinux/config"), "SELINUXTYPE=../x\n").unwrap();
        assert!(lxc_contexts_path(root.path()).is_err());
    }

    #[test]
    fn label_options() {
        let opts =
            LabelOpts::parse(&["level:s0:c100,c200", "type:spc_t", "filetype:my_file_t"]).unwrap();
        assert_eq!(opts.level, Some("s0:c100,c200".parse().unwrap()));
        assert_eq!(opts.type_.as_deref(), Some("spc_t"));
        assert!(!opts.disable);
        assert!(LabelOpts::parse(&["disable"]).unwrap().disable);
        assert_eq!(LabelOpts::parse::<&str>(&[]).unwrap(), LabelOpts::default());
        for (bad, why) in [
            (&["disable", "type:x_t"][..], "cannot be combined"),
            (&["type:a_t", "type:b_t"], "given twice"),
            (&["level:s0:c1", "level:s0:c2"], "given twice"),
            (&["level:s0-s0:c0.c1023"], "is a range"),
            (&["level:s0:c2000"], "beyond 1023"),
            (&["colour:blue"], "unknown key"),
            (&["enable"], "expected disable"),
            (&["nested"], "not supported"),
            (&["nested:x"], "not supported"),
            (&["type:bad\"type"], "not an SELinux identifier"),
            (&["user:"], "not an SELinux identifier"),
        ] {
            let err = LabelOpts::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn labels_from_contexts_options_and_level() {
        let contexts = ContainerContexts::parse(FEDORA, None).unwrap();
        let labels = Labels::compute(&contexts, &LabelOpts::default(), &level());
        assert_eq!(labels.process, "system_u:system_r:container_t:s0:c1,c2");
        assert_eq!(labels.file, "system_u:object_r:container_file_t:s0:c1,c2");

        let opts =
            LabelOpts::parse(&["user:staff_u", "role:staff_r", "type:spc_t", "filetype:f_t"])
                .unwrap();
        let labels = Labels::compute(&contexts, &opts, &"s0:c0.c1023".parse().unwrap());
        assert_eq!(labels.process, "staff_u:staff_r:spc_t:s0:c0.c1023");
        assert_eq!(labels.file, "staff_u:object_r:f_t:s0:c0.c1023");
    }

    #[test]
    fn mount_option_quotes_the_label() {
        let labels = Labels::compute(
            &ContainerContexts::default(),
            &LabelOpts::default(),
            &level(),
        );
        assert_eq!(
            mount_option(&labels.file),
            r#"context="system_u:object_r:container_file_t:s0:c1,c2""#
        );
        // In an option list the quoted commas stay inside the one option.
        let list = format!("{},mode=755", mount_option(&labels.file));
        assert_eq!(
            list,
            r#"context="system_u:object_r:container_file_t:s0:c1,c2",mode=755"#
        );
    }
}
