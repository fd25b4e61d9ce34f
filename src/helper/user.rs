//! Who the payload runs as: a checked [`UserSpec`] looked up in the container's own
//! /etc/passwd and /etc/group, after the pivot, so a name means what the image says. A number
//! is only ever matched as a number (an entry *named* `1000` does not make `-u 1000` anyone
//! but uid 1000, runc CVE-2016-3697); a numeric uid without a passwd entry is fine (gid 0
//! unless given).

use crate::spec::user::{Id, UserSpec};

/// The identity to switch to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from /etc/group membership of the user name).
    pub groups: Vec<u32>,
    /// The passwd home directory, for `HOME` when the environment has none.
    pub home: Option<String>,
}

/// Read at most this much of /etc/passwd and /etc/group (an image controls them).
const MAX_DB: u64 = 4 << 20;

/// Resolve `spec` against the container's databases (read from the current root).
pub fn resolve(spec: &UserSpec) -> Result<Ids, String> {
    let read = |p: &str| {
        use std::io::Read;
        let mut s = String::new();
        if let Ok(f) = std::fs::File::open(p) {
            let _ = f.take(MAX_DB).read_to_string(&mut s);
        }
        s
    };
    resolve_in(spec, &read("/etc/passwd"), &read("/etc/group"))
}

fn read_db(p: &str) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Ok(f) = std::fs::File::open(p) {
        // A database that cannot be read is an empty one: lookups then fall back.
        let _ = f.take(MAX_DB).read_to_string(&mut s);
    }
    s
}

/// The gid of the container's `tty` group (a terminal's group, as login(1) gives it), from
/// the current root's /etc/group.
pub fn tty_gid() -> Option<u32> {
    group_gid_in(&read_db("/etc/group"), "tty")
}

/// The gid of group `name` in a group(5) database.
pub fn group_gid_in(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// The login shell of `uid` in the current root's /etc/passwd, else `/bin/sh`.
pub fn shell_of(uid: u32) -> String {
    shell_in(&read_db("/etc/passwd"), uid)
}

/// [`shell_of`] on a given passwd database.
pub fn shell_in(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7 && f[2].parse::<u32>().ok() == Some(uid) && f[6].starts_with('/'))
                .then(|| f[6].to_string())
        })
        .unwrap_or_else(|| "/bin/sh".into())
}

/// [`resolve`] on given database contents.
pub fn resolve_in(spec: &UserSpec, passwd: &str, group: &str) -> Result<Ids, String> {
    // passwd(5): name:password:UID:GID:GECOS:directory:shell
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid: u32 = f[2].parse().ok()?;
        let matches = match &spec.user {
            Id::Num(n) => *n == uid,
            Id::Name(n) => f[0] == n,
        };
        matches.then(|| {
            (
                f[0].to_string(),
                uid,
                f[3].parse::<u32>().ok(),
                f[5].to_string(),
            )
        })
    });
    let (name, uid, pw_gid, home) = match (entry, &spec.user) {
        (Some((n, u, g, h)), _) => (Some(n), u, g, Some(h)),
        (None, Id::Num(u)) => (None, *u, None, None),
        (None, Id::Name(n)) => return Err(format!("no user {n:?} in the image's /etc/passwd")),
    };
    // group(5): group_name:password:GID:user_list
    let groups: Vec<(String, u32, Vec<String>)> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some((
                f[0].to_string(),
                f[2].parse().ok()?,
                f[3].split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            ))
        })
        .collect();
    let gid = match &spec.group {
        Some(Id::Num(n)) => *n,
        Some(Id::Name(g)) => groups
            .iter()
            .find(|(n, _, _)| n == g)
            .map(|(_, id, _)| *id)
            .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        None => pw_gid.unwrap_or(0),
    };
    let mut supplementary: Vec<u32> = match (&name, &spec.group) {
        // An explicit group replaces the user's memberships, as docker does.
        (Some(n), None) => groups
            .iter()
            .filter(|(_, _, members)| members.iter().any(|m| m == n))
            .map(|(_, id, _)| *id)
            .collect(),
        _ => Vec::new(),
    };
    supplementary.retain(|g| *g != gid);
    supplementary.insert(0, gid);
    supplementary.dedup();
    Ok(Ids {
        uid,
        gid,
        groups: supplementary,
        home: home.filter(|h| !h.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\nbroken\n1000:x:0:0:evil:/:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";

    fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<Ids, String> {
        super::resolve_in(&UserSpec::parse(spec).unwrap(), passwd, group)
    }
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:app,www\napp:x:1000:\n";

    #[test]
    fn names_and_numbers() {
        let a = resolve_in("app", PASSWD, GROUP).unwrap();
        assert_eq!(
            (a.uid, a.gid, a.groups.clone()),
            (1000, 1000, vec![1000, 50])
        );
        assert_eq!(a.home.as_deref(), Some("/home/app"));
        let w = resolve_in("33:staff", PASSWD, GROUP).unwrap();
        assert_eq!((w.uid, w.gid, w.groups), (33, 50, vec![50]));
        let n = resolve_in("4242", PASSWD, GROUP).unwrap();
        assert_eq!((n.uid, n.gid, n.home), (4242, 0, None));
        let ng = resolve_in("4242:7", PASSWD, GROUP).unwrap();
        assert_eq!((ng.uid, ng.gid), (4242, 7));
    }

    #[test]
    fn the_tty_group_and_login_shells() {
        assert_eq!(group_gid_in("root:x:0:\ntty:x:5:\n", "tty"), Some(5));
        assert_eq!(group_gid_in(GROUP, "tty"), None);
        assert_eq!(shell_in(PASSWD, 1000), "/bin/sh");
        assert_eq!(shell_in(PASSWD, 33), "/bin/false");
        assert_eq!(shell_in("x:x:7:7::/:\n", 7), "/bin/sh");
        assert_eq!(shell_in(PASSWD, 4242), "/bin/sh");
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(resolve_in("nobody", PASSWD, GROUP).is_err());
        assert!(resolve_in("app:nogroup", PASSWD, GROUP).is_err());
    }

    #[test]
    fn a_number_is_never_a_name() {
        // The passwd above has an entry *named* "1000" with uid 0 before the real uid 1000.
        let a = resolve_in("1000", PASSWD, GROUP).unwrap();
        assert_eq!((a.uid, a.gid), (1000, 1000));
        assert_eq!(a.home.as_deref(), Some("/home/app"));
    }
}
