//! Who the payload runs as, as `--user`/`-u` and an image's `User` say it: `user`, `uid`,
//! `user:group`, `uid:gid`, `user:gid`, `uid:group` (the OCI image spec's forms). A number is
//! always a number: `-u 1000` is uid 1000 even when the image's /etc/passwd has an entry
//! *named* `1000` (runc CVE-2016-3697). Names are looked up in the container's own databases
//! by the helper, after the pivot.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A user or group: by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Id {
    Num(u32),
    Name(String),
}

/// A checked user specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub user: Id,
    /// An explicit group replaces the user's primary group and memberships, as docker does.
    pub group: Option<Id>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} is empty")]
    Empty(String),
    #[error("invalid user {0:?}: names are up to 256 printable characters without '/' or ':'")]
    Invalid(String),
}

/// The longest user or group name accepted.
const MAX_NAME: usize = 256;

fn id(s: &str, whole: &str) -> Result<Id, UserError> {
    if s.is_empty() {
        return Err(UserError::Empty(whole.into()));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u32>()
            .map(Id::Num)
            .map_err(|_| UserError::Invalid(whole.into()));
    }
    if s.len() > MAX_NAME || s.chars().any(|c| c.is_control() || c == '/' || c == ':') {
        return Err(UserError::Invalid(whole.into()));
    }
    Ok(Id::Name(s.into()))
}

impl UserSpec {
    /// Parse `user[:group]`.
    pub fn parse(s: &str) -> Result<UserSpec, UserError> {
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        Ok(UserSpec {
            user: id(u, s)?,
            group: g.map(|g| id(g, s)).transpose()?,
        })
    }

    /// Root with no explicit group: what a container runs as when nothing says otherwise.
    pub fn is_root(&self) -> bool {
        self.user == Id::Num(0) && self.group.as_ref().is_none_or(|g| *g == Id::Num(0))
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Num(n) => write!(f, "{n}"),
            Id::Name(s) => f.write_str(s),
        }
    }
}

impl std::fmt::Display for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{g}", self.user),
            None => write!(f, "{}", self.user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_numbers_and_names_are_names() {
        assert_eq!(
            UserSpec::parse("1000").unwrap(),
            UserSpec {
                user: Id::Num(1000),
                group: None
            }
        );
        assert_eq!(
            UserSpec::parse("app:staff").unwrap(),
            UserSpec {
                user: Id::Name("app".into()),
                group: Some(Id::Name("staff".into()))
            }
        );
        assert_eq!(UserSpec::parse("33:50").unwrap().group, Some(Id::Num(50)));
        assert!(UserSpec::parse("0").unwrap().is_root());
        assert!(!UserSpec::parse("0:5").unwrap().is_root());
        assert_eq!(
            UserSpec::parse("app:staff").unwrap().to_string(),
            "app:staff"
        );
    }

    #[test]
    fn bad_users_are_refused() {
        for bad in [
            "",
            ":",
            "app:",
            ":grp",
            "a/b",
            "a\nb",
            "99999999999",
            "a:b:c",
        ] {
            assert!(UserSpec::parse(bad).is_err(), "{bad:?}");
        }
    }
}
