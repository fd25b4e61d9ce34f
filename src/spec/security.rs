//! The `[security]` table checked: the user namespace, the capability set, no_new_privs,
//! rlimits, and `--security-opt` (seccomp profile, SELinux label options, `unsafe-caps`).

use std::sync::Arc;

use thiserror::Error;

use super::HostFacts;
use super::definition::Security;
use super::ulimit::{self, Ulimit, UlimitError};
use crate::caps::{self, CapError, CapSet};
use crate::seccomp::{Profile, SeccompOpt};
use crate::selinux::{LabelOpts, SelinuxError};
use crate::userns::{UsernsError, UsernsMode};

/// `--security-opt` values berth knows, besides `seccomp=…` and `label=…`.
pub const UNSAFE_CAPS: &str = "unsafe-caps";
const NO_NEW_PRIVILEGES: &str = "no-new-privileges";

/// A container's confinement, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecuritySpec {
    pub userns: UsernsMode,
    /// The capabilities root in the container has (bounding set of every payload).
    pub caps: CapSet,
    pub no_new_privs: bool,
    pub ulimits: Vec<Ulimit>,
    /// `None`: unconfined. The profile is read and checked at validation.
    pub seccomp: Option<Arc<Profile>>,
    pub label: LabelOpts,
}

#[derive(Debug, Error)]
pub enum SecurityError {
    #[error(transparent)]
    Userns(#[from] UsernsError),
    #[error(transparent)]
    Caps(#[from] CapError),
    #[error(transparent)]
    Ulimit(#[from] UlimitError),
    #[error("--security-opt seccomp={0}")]
    Seccomp(String),
    #[error("--security-opt label: {0}")]
    Label(#[from] SelinuxError),
    #[error(
        "unknown --security-opt {0:?} (known: seccomp=unconfined|PATH, label=…, \
         no-new-privileges, unsafe-caps)"
    )]
    UnknownOpt(String),
}

impl PartialEq for SecurityError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// Check a `[security]` table.
pub fn check(s: &Security, facts: &dyn HostFacts) -> Result<SecuritySpec, SecurityError> {
    let userns: UsernsMode = match &s.userns {
        Some(u) => u.parse()?,
        None => UsernsMode::Auto,
    };
    let mut seccomp = SeccompOpt::Default;
    let mut labels = Vec::new();
    let mut unsafe_caps = false;
    let mut no_new_privs = s.no_new_privileges;
    for opt in &s.security_opt {
        match opt.split_once(['=', ':']) {
            Some(("seccomp", v)) => {
                seccomp = SeccompOpt::parse(v).map_err(|e| SecurityError::Seccomp(e.to_string()))?
            }
            Some(("label", v)) => labels.push(v.to_string()),
            None if opt == UNSAFE_CAPS => unsafe_caps = true,
            None if opt == NO_NEW_PRIVILEGES => no_new_privs = true,
            Some((NO_NEW_PRIVILEGES, "true")) => no_new_privs = true,
            _ => return Err(SecurityError::UnknownOpt(opt.clone())),
        }
    }
    let caps = caps::resolve(&s.cap_add, &s.cap_drop)?;
    if userns == UsernsMode::Host {
        caps::check_host_userns(caps, unsafe_caps)?;
    }
    let seccomp = match seccomp {
        SeccompOpt::Unconfined => None,
        SeccompOpt::Default => Some(facts.default_seccomp()),
        SeccompOpt::Profile(path) => Some(Arc::new(
            facts
                .seccomp_profile(&path)
                .map_err(SecurityError::Seccomp)?,
        )),
    };
    Ok(SecuritySpec {
        userns,
        caps,
        no_new_privs,
        ulimits: ulimit::resolve(&s.ulimits)?,
        seccomp,
        label: LabelOpts::parse(&labels)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::Facts;
    use super::*;

    fn sec(f: impl FnOnce(&mut Security)) -> Result<SecuritySpec, SecurityError> {
        let mut s = Security::default();
        f(&mut s);
        check(&s, &Facts::default())
    }

    #[test]
    fn defaults_are_a_user_namespace_podmans_caps_and_berths_filter() {
        let s = sec(|_| {}).unwrap();
        assert_eq!(s.userns, UsernsMode::Auto);
        assert_eq!(s.caps, CapSet::DEFAULT);
        assert!(!s.no_new_privs);
        assert!(s.seccomp.is_some());
        assert!(!s.label.disable);
        assert!(
            s.ulimits
                .iter()
                .any(|u| u.resource == ulimit::Rlimit::Nofile)
        );
    }

    #[test]
    fn options_are_typed() {
        let s = sec(|s| {
            s.cap_add = vec!["AUDIT_WRITE".into()];
            s.cap_drop = vec!["cap_chown".into()];
            s.security_opt = vec![
                "seccomp=unconfined".into(),
                "label=disable".into(),
                "no-new-privileges".into(),
            ];
            s.userns = Some("host".into());
        })
        .unwrap();
        assert!(s.seccomp.is_none() && s.label.disable && s.no_new_privs);
        assert_eq!(s.userns, UsernsMode::Host);
        assert!(s.caps.contains(crate::caps::Cap::AUDIT_WRITE));
        assert!(!s.caps.contains(crate::caps::Cap::CHOWN));
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        for (f, want) in [
            (
                Box::new(|s: &mut Security| s.cap_add = vec!["BOGUS".into()])
                    as Box<dyn Fn(&mut Security)>,
                "BOGUS",
            ),
            (Box::new(|s| s.userns = Some("1:2".into())), "1:2"),
            (
                Box::new(|s| s.userns = Some("sometimes".into())),
                "sometimes",
            ),
            (
                Box::new(|s| s.security_opt = vec!["apparmor=x".into()]),
                "apparmor",
            ),
            (
                Box::new(|s| s.security_opt = vec!["seccomp=rel.json".into()]),
                "seccomp",
            ),
            (
                Box::new(|s| s.security_opt = vec!["seccomp=/nope.json".into()]),
                "nope",
            ),
            (
                Box::new(|s| s.security_opt = vec!["label=level:s99".into()]),
                "label",
            ),
            (
                Box::new(|s| s.ulimits = vec!["nofile=9:1".into()]),
                "nofile",
            ),
            (
                Box::new(|s| {
                    s.userns = Some("host".into());
                    s.cap_add = vec!["SYS_ADMIN".into()];
                }),
                "SYS_ADMIN",
            ),
        ] {
            let e = sec(f).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
        // Dangerous capabilities without a user namespace need unsafe-caps.
        assert!(
            sec(|s| {
                s.userns = Some("host".into());
                s.cap_add = vec!["SYS_ADMIN".into()];
                s.security_opt = vec![UNSAFE_CAPS.into()];
            })
            .is_ok()
        );
    }
}
