//! Container names: what is allowed, and how a name becomes a unit name and an object path.

use thiserror::Error;

/// The longest accepted name. Unit names (`berth-NAME.scope`) and hostnames (64 bytes) stay
/// within their limits.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("container name is empty")]
    Empty,
    #[error("container name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("container name {0:?} may only contain ASCII letters, digits, '.', '_' and '-'")]
    BadCharacter(String),
    #[error("container name {0:?} must start with a letter or a digit")]
    BadStart(String),
}

/// Check a container name: 1 to 64 characters from `[A-Za-z0-9._-]`, starting with a letter
/// or a digit (which also rules out `.`, `..` and anything with `/`).
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(NameError::BadCharacter(name.to_string()));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(NameError::BadStart(name.to_string()));
    }
    Ok(())
}

/// The transient scope that holds a container.
pub fn scope_unit(name: &str) -> String {
    format!("berth-{name}.scope")
}

/// Escape a string into one object path element, the way `sd_bus_path_encode` does: ASCII
/// letters and digits stay, every other byte becomes `_XX` (lower-case hex); the empty string
/// becomes `_`.
pub fn bus_escape(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    let mut out = String::with_capacity(s.len() * 3);
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The inverse of [`bus_escape`]; `None` for malformed input.
pub fn bus_unescape(s: &str) -> Option<String> {
    if s == "_" {
        return Some(String::new());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The object path of a container.
pub fn container_path(name: &str) -> String {
    format!("/org/berth/berth1/container/{}", bus_escape(name))
}

/// The D-Bus object path of an image.
pub fn image_path(name: &str) -> String {
    format!("/org/berth/berth1/image/{}", bus_escape(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["web", "a", "db-1", "x.y_z", "9lives", &"a".repeat(64)] {
            assert_eq!(validate(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(validate(&"a".repeat(65)), Err(NameError::TooLong));
        for n in [
            "/", "..", ".", "a/b", "héllo", "a b", "-x", ".hidden", "_x", "a\0",
        ] {
            assert!(validate(n).is_err(), "{n:?} accepted");
        }
    }

    #[test]
    fn escaping_round_trips_and_matches_sd_bus() {
        assert_eq!(bus_escape("web"), "web");
        assert_eq!(bus_escape("db-1"), "db_2d1");
        assert_eq!(bus_escape("9x"), "_39x");
        assert_eq!(bus_escape(""), "_");
        for n in ["web", "db-1", "x.y_z", "9lives", ""] {
            assert_eq!(bus_unescape(&bus_escape(n)).as_deref(), Some(n));
        }
        assert_eq!(bus_unescape("_zz"), None);
    }

    #[test]
    fn unit_and_path() {
        assert_eq!(scope_unit("web"), "berth-web.scope");
        assert_eq!(container_path("a-b"), "/org/berth/berth1/container/a_2db");
    }
}
