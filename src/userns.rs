//! User namespaces: one private range of host user/group IDs per container, like
//! `systemd-nspawn --private-users=pick`, but allocated by berthd and persisted so a
//! container keeps its range (and so the ownership of its writable layer) for its lifetime.
//!
//! Where ranges come from (systemd's `docs/UIDS-GIDS.md`): IDs 0x80000–0x6FFFFFFF
//! (524288–1879048191) are the span systemd leaves to container managers; nspawn picks from it
//! in 64K steps. berth uses that [`POOL`], cut into slots of [`RANGE_SIZE`] = 65536 IDs aligned
//! to 65536, so that inside the container UIDs 0–65535 (including `nobody` = 65534) are all
//! mapped. A range is never handed out when it overlaps
//! - another container's range (allocated or explicit),
//! - an entry of `/etc/subuid` or `/etc/subgid` (rootless podman, newuidmap users), or
//! - a user in `/etc/passwd` or a group in `/etc/group` whose ID falls inside it.
//!
//! The same range serves as UID map and GID map, so each check looks at both kinds of files.
//! IDs below the pool (0–65535 with the overflow IDs 65534/65535, systemd's dynamic users,
//! homed users, and the usual `100000:65536` subuid blocks) can never be allocated at all.
//! IDs that exist only in NSS modules (LDAP, sssd) are not visible in these files; systemd's
//! convention keeps them out of the container span.
//!
//! Allocation is O(1): a FIFO queue of free slots (so a released range is reused last, which
//! keeps the IDs of a container removed a moment ago — whose files might still exist somewhere
//! — away from the next container as long as possible) plus a slot table. Every change is
//! persisted before it takes effect in memory, and costs the same with 1 or 1000 ranges: each
//! owner's range is one small JSON file, `DIR/userns-ranges/OWNER.json`, written to a temporary
//! file, fsynced, renamed into place, with the directory fsynced (release: unlink + directory
//! fsync). A crash leaves each file either old or new; leftover temporary files are removed on
//! open.
//!
//! [`write_maps`] is the one privileged step: berthd (root in the initial user namespace)
//! writes the container's first process's `uid_map`/`gid_map`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

mod allocator;
mod hostids;

pub use allocator::*;
pub use hostids::*;

/// IDs per container: a full 16-bit range, so every ID a distribution uses is mapped.
pub const RANGE_SIZE: u32 = 0x1_0000;

/// systemd's container span, 0x80000–0x6FFFFFFF, the only place berth takes ranges from.
pub const POOL: IdRange = IdRange {
    host_start: 0x0008_0000,
    count: 0x7000_0000 - 0x0008_0000,
};

/// Largest explicit `--userns=UID:COUNT`: 16 slots, enough for a container that runs its own
/// containers (which need sub-ranges of their own).
pub const MAX_COUNT: u32 = 16 * RANGE_SIZE;

/// The kernel's limit on lines in one `uid_map`/`gid_map` (user_namespaces(7), Linux 4.15+).
pub const MAX_MAP_LINES: usize = 340;

/// The state directory inside the one the caller gives [`IdAllocator::open`]: one
/// `OWNER.json` per range.
pub const STATE_DIR: &str = "userns-ranges";

/// A contiguous range of host IDs: `host_start .. host_start + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdRange {
    pub host_start: u32,
    pub count: u32,
}

impl IdRange {
    /// One past the last ID (u64, so a range ending at 2^32 does not overflow).
    pub fn end(&self) -> u64 {
        u64::from(self.host_start) + u64::from(self.count)
    }

    /// Whether the two ranges share at least one ID.
    pub fn overlaps(&self, other: &IdRange) -> bool {
        self.count > 0
            && other.count > 0
            && u64::from(self.host_start) < other.end()
            && u64::from(other.host_start) < self.end()
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains_range(&self, other: &IdRange) -> bool {
        other.host_start >= self.host_start && other.end() <= self.end()
    }

    /// The map that gives the container IDs `0 .. count`, backed by this range.
    pub fn id_map(&self) -> IdMap {
        IdMap {
            inside: 0,
            outside: self.host_start,
            count: self.count,
        }
    }

    /// UID and GID maps for the plan: the same single line for both.
    pub fn id_maps(&self) -> IdMaps {
        IdMaps {
            uid: vec![self.id_map()],
            gid: vec![self.id_map()],
        }
    }

    /// The host ID that container ID `inside` appears as, if mapped.
    pub fn to_host(&self, inside: u32) -> Option<u32> {
        (inside < self.count).then(|| self.host_start + inside)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return write!(f, "{} (empty)", self.host_start);
        }
        write!(
            f,
            "{}–{} ({} IDs)",
            self.host_start,
            self.end() - 1,
            self.count
        )
    }
}

/// One line of `/proc/PID/uid_map` or `gid_map`: IDs `inside .. inside+count` in the namespace
/// are `outside .. outside+count` in its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.inside, self.outside, self.count)
    }
}

/// The user-namespace part of a container's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMaps {
    pub uid: Vec<IdMap>,
    pub gid: Vec<IdMap>,
}

/// `--userns=`: how a container's user namespace is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum UsernsMode {
    /// `auto` (default): a private user namespace with a range berthd picks.
    #[default]
    Auto,
    /// `UID:COUNT`: a private user namespace backed by exactly this host range, which must lie
    /// in [`POOL`], start at a multiple of 65536, and hold 1..=[`MAX_COUNT`] IDs.
    Fixed(IdRange),
    /// `host`: no user namespace; container root is host root. An explicit opt-out.
    Host,
}

/// What to ask the allocator for; `UsernsMode::Host` needs no range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    Auto,
    Fixed(IdRange),
}

impl UsernsMode {
    /// The allocation this mode needs, or `None` for `host`.
    pub fn request(self) -> Option<RangeRequest> {
        match self {
            UsernsMode::Auto => Some(RangeRequest::Auto),
            UsernsMode::Fixed(r) => Some(RangeRequest::Fixed(r)),
            UsernsMode::Host => None,
        }
    }
}

impl FromStr for UsernsMode {
    type Err = UsernsError;

    fn from_str(s: &str) -> Result<Self, UsernsError> {
        let invalid = |reason: String| UsernsError::InvalidMode {
            value: s.to_owned(),
            reason,
        };
        match s {
            "auto" => return Ok(UsernsMode::Auto),
            "host" => return Ok(UsernsMode::Host),
            _ => {}
        }
        let Some((start, count)) = s.split_once(':') else {
            return Err(invalid("not a known mode".into()));
        };
        let host_start: u32 = start
            .parse()
            .map_err(|_| invalid(format!("{start:?} is not a UID")))?;
        let count: u32 = count
            .parse()
            .map_err(|_| invalid(format!("{count:?} is not a count")))?;
        if count == 0 || count > MAX_COUNT {
            return Err(invalid(format!("COUNT must be 1..={MAX_COUNT}")));
        }
        if !host_start.is_multiple_of(RANGE_SIZE) {
            return Err(invalid(format!(
                "UID must be a multiple of {RANGE_SIZE} (e.g. {})",
                host_start / RANGE_SIZE * RANGE_SIZE
            )));
        }
        let range = IdRange { host_start, count };
        if !POOL.contains_range(&range) {
            return Err(invalid(format!(
                "range {range} is outside the container span {POOL} (systemd's UIDS-GIDS.md)"
            )));
        }
        Ok(UsernsMode::Fixed(range))
    }
}

impl fmt::Display for UsernsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsernsMode::Auto => f.write_str("auto"),
            UsernsMode::Host => f.write_str("host"),
            UsernsMode::Fixed(r) => write!(f, "{}:{}", r.host_start, r.count),
        }
    }
}

impl TryFrom<String> for UsernsMode {
    type Error = UsernsError;
    fn try_from(s: String) -> Result<Self, UsernsError> {
        s.parse()
    }
}

impl From<UsernsMode> for String {
    fn from(m: UsernsMode) -> String {
        m.to_string()
    }
}

/// Something a requested range collides with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Another container's range.
    Container { owner: String, range: IdRange },
    /// An `/etc/subuid` or `/etc/subgid` entry.
    SubId {
        file: PathBuf,
        name: String,
        range: IdRange,
    },
    /// A user or group of the host whose ID falls in the range.
    HostId {
        file: PathBuf,
        name: String,
        id: u32,
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::Container { owner, range } => {
                write!(f, "the range {range} of container {owner:?}")
            }
            Conflict::SubId { file, name, range } => write!(
                f,
                "the {} entry {name}:{}:{} ({range})",
                file.display(),
                range.host_start,
                range.count
            ),
            Conflict::HostId { file, name, id } => {
                write!(f, "{name} (ID {id}) in {}", file.display())
            }
        }
    }
}

/// Errors of this module, each naming what was refused and why.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error(
        "invalid user namespace setting {value:?}: {reason} (expected \"auto\", \"host\" or \"UID:COUNT\")"
    )]
    InvalidMode { value: String, reason: String },
    #[error("ID range {range} overlaps {conflict}")]
    Overlap { range: IdRange, conflict: Conflict },
    #[error("ID range {range} is outside this allocator's pool {pool}")]
    OutsidePool { range: IdRange, pool: IdRange },
    #[error(
        "no free range of {RANGE_SIZE} IDs left in {pool}: {used} slots are used by containers and {reserved} are reserved by host users, groups or subuid/subgid entries; remove containers or move host ranges out of this span"
    )]
    PoolExhausted {
        pool: IdRange,
        used: usize,
        reserved: usize,
    },
    #[error("container {owner:?} already has ID range {existing}; it cannot also have {requested}")]
    OwnerHasOtherRange {
        owner: String,
        existing: IdRange,
        requested: IdRange,
    },
    #[error("invalid owner {owner:?} of an ID range: {reason}")]
    InvalidOwner {
        owner: String,
        reason: crate::name::NameError,
    },
    #[error("reading {path}: {source}")]
    ReadHostFile { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {reason}")]
    ParseHostFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("reading ID-range state {path}: {source}")]
    ReadState { path: PathBuf, source: io::Error },
    #[error("ID-range state {path} is invalid: {reason}")]
    CorruptState { path: PathBuf, reason: String },
    #[error("saving ID-range state {path}: {source}")]
    SaveState { path: PathBuf, source: io::Error },
}

type Result<T, E = UsernsError> = std::result::Result<T, E>;

/// Which map file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    Uid,
    Gid,
}

impl MapKind {
    fn file(self) -> &'static str {
        match self {
            MapKind::Uid => "uid_map",
            MapKind::Gid => "gid_map",
        }
    }
}

fn map_text(maps: &[IdMap]) -> io::Result<String> {
    if maps.is_empty() || maps.len() > MAX_MAP_LINES || maps.iter().any(|m| m.count == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("an ID map needs 1..={MAX_MAP_LINES} lines with a count > 0"),
        ));
    }
    Ok(maps.iter().map(|m| format!("{m}\n")).collect())
}

fn write_proc(pid: Pid, file: &str, text: &str) -> io::Result<()> {
    let path = format!("/proc/{pid}/{file}");
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("writing {text:?} to {path}: {e}"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(ctx)?;
    // The kernel takes a map in exactly one write(2), and only once per namespace.
    let n = f.write(text.as_bytes()).map_err(ctx)?;
    if n != text.len() {
        return Err(ctx(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write ({n} of {} bytes)", text.len()),
        )));
    }
    Ok(())
}

/// Write the ID maps of the user namespace that process `pid` is in (berthd, as root in the
/// initial user namespace, for the container's first process while it waits at the barrier;
/// the caller keeps that process from being reaped meanwhile, so `pid` cannot be reused).
///
/// Order, per user_namespaces(7): `setgroups` first, then `uid_map`, then `gid_map`. We write
/// `allow` to `setgroups`: a writer with `CAP_SETGID` in the parent namespace may map GIDs
/// without denying setgroups(2) (only unprivileged writers must write `deny`), and container
/// init needs setgroups(2) to drop supplementary groups. Writing it explicitly, rather than
/// relying on the inherited default, fails loudly when berthd itself runs in a namespace whose
/// `setgroups` is `deny`. Each map is written once, in one write, as the kernel requires.
pub fn write_maps(pid: Pid, uid_map: &[IdMap], gid_map: &[IdMap]) -> io::Result<()> {
    let uid = map_text(uid_map)?;
    let gid = map_text(gid_map)?;
    write_proc(pid, "setgroups", "allow")?;
    write_proc(pid, "uid_map", &uid)?;
    write_proc(pid, "gid_map", &gid)
}

/// Read `/proc/PID/uid_map` or `gid_map` as the reader's user namespace sees it (from the
/// initial namespace: the container's real host IDs).
pub fn read_map(pid: Pid, kind: MapKind) -> io::Result<Vec<IdMap>> {
    let path = format!("/proc/{pid}/{}", kind.file());
    let mut text = String::new();
    fs::File::open(&path)?.read_to_string(&mut text)?;
    text.lines()
        .map(|line| {
            let f: Vec<u32> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))?;
            match f[..] {
                [inside, outside, count] => Ok(IdMap {
                    inside,
                    outside,
                    count,
                }),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{path}: bad line {line:?}"),
                )),
            }
        })
        .collect()
}

/// A process holding a fresh user namespace whose maps are written, for building idmapped
/// mounts when the container's own process is not at hand (and for tests). The namespace lives
/// as long as a descriptor to it does; the holder process is killed and reaped on drop.
pub struct UsernsHolder {
    child: std::process::Child,
}

impl UsernsHolder {
    /// Start `sleep infinity` in a new user namespace and write `maps` for it. Needs root.
    pub fn new(maps: &IdMaps) -> io::Result<UsernsHolder> {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("infinity")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        crate::sys::userns::command_unshare_user(&mut cmd);
        let child = cmd.spawn()?;
        let holder = UsernsHolder { child };
        write_maps(holder.pid(), &maps.uid, &maps.gid)?;
        Ok(holder)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// A descriptor of the namespace (`/proc/PID/ns/user`), valid after the holder is gone.
    pub fn userns_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        let f = fs::File::open(format!("/proc/{}/ns/user", self.pid()))?;
        Ok(f.into())
    }
}

impl Drop for UsernsHolder {
    fn drop(&mut self) {
        // Best effort: the holder only sleeps; failure to kill means it already exited.
        if self.child.kill().is_ok() {
            let _reaped = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn pool(slots: u32) -> IdRange {
        IdRange {
            host_start: POOL.host_start,
            count: slots * RANGE_SIZE,
        }
    }

    fn fixed(start: u32, count: u32) -> RangeRequest {
        RangeRequest::Fixed(IdRange {
            host_start: start,
            count,
        })
    }

    #[test]
    fn parses_modes() {
        assert_eq!("auto".parse::<UsernsMode>().unwrap(), UsernsMode::Auto);
        assert_eq!("host".parse::<UsernsMode>().unwrap(), UsernsMode::Host);
        assert_eq!(
            "524288:65536".parse::<UsernsMode>().unwrap(),
            UsernsMode::Fixed(IdRange {
                host_start: 524288,
                count: 65536
            })
        );
        assert_eq!(
            "1048576:1000".parse::<UsernsMode>().unwrap().to_string(),
            "1048576:1000"
        );
        assert_eq!(UsernsMode::default(), UsernsMode::Auto);
        for bad in [
            "",
            "pick",
            "100000:65536",   // below the container span
            "524289:65536",   // not aligned
            "524288:0",       // empty
            "524288:1048577", // more than MAX_COUNT
            "1879048192:65536",
            "1879003136:131072", // runs past the span's end
            "-1:5",
            "524288",
            "524288:65536:1",
        ] {
            let err = bad.parse::<UsernsMode>().unwrap_err();
            assert!(
                matches!(err, UsernsError::InvalidMode { .. }),
                "{bad}: {err}"
            );
        }
        let msg = "524289:65536"
            .parse::<UsernsMode>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("multiple of 65536"), "{msg}");
        // Serde goes through the same parser.
        let m: UsernsMode = serde_json::from_str("\"589824:65536\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"589824:65536\"");
        assert!(serde_json::from_str::<UsernsMode>("\"0:65536\"").is_err());
    }

    #[test]
    fn maps_for_the_plan() {
        let r = IdRange {
            host_start: 589824,
            count: 65536,
        };
        let maps = r.id_maps();
        assert_eq!(maps.uid, maps.gid);
        assert_eq!(maps.uid[0].to_string(), "0 589824 65536");
        assert_eq!(r.to_host(1000), Some(590824));
        assert_eq!(r.to_host(65536), None);
    }

    #[test]
    fn host_files_parse_and_reject_garbage() {
        let mut h = HostIds::default();
        h.add_subid_file(
            Path::new("/etc/subuid"),
            "# comment\nalice:100000:65536\n1001:589824:10\n\n",
        )
        .unwrap();
        h.add_id_db(
            Path::new("/etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n+@nis::::::\nldapish:x:720896:720896::/:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(h.reserved.len(), 4);
        let err = h
            .add_subid_file(Path::new("/etc/subgid"), "bob:abc:65536\n")
            .unwrap_err();
        assert!(err.to_string().starts_with("/etc/subgid:1:"), "{err}");
        let err = h
            .add_id_db(Path::new("/etc/group"), "ok:x:5:\nbroken:x:\n")
            .unwrap_err();
        assert!(err.to_string().starts_with("/etc/group:2:"), "{err}");
        // A count past 2^32 is clamped, not wrapped.
        h.add_subid_file(Path::new("/etc/subuid"), "all:4294901760:999999999999\n")
            .unwrap();
        assert_eq!(h.reserved.last().unwrap().range.end(), 1 << 32);
    }

    #[test]
    fn slots_touching_clips_to_the_pool() {
        let p = pool(4);
        let at = |start: u32, count: u32| {
            slots_touching(
                p,
                IdRange {
                    host_start: start,
                    count,
                },
            )
        };
        assert_eq!(at(0, 10), 0..0);
        assert_eq!(at(POOL.host_start - 1, 2), 0..1);
        assert_eq!(at(POOL.host_start + RANGE_SIZE - 1, 2), 0..2);
        assert_eq!(at(POOL.host_start + RANGE_SIZE, 1), 1..2);
        assert_eq!(at(100000, u32::MAX - 100000), 0..4);
        assert_eq!(at(POOL.host_start + 4 * RANGE_SIZE, 1), 0..0);
    }

    #[test]
    fn load_reads_etc_and_tolerates_missing_files() {
        let etc = tempfile::tempdir().unwrap();
        fs::write(etc.path().join("subgid"), "carol:524288:65536\n").unwrap();
        fs::write(etc.path().join("passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        let h = HostIds::load(etc.path()).unwrap();
        assert_eq!(h.reserved.len(), 2);
        assert!(matches!(
            h.conflict(&slot_range(POOL, 0)),
            Some(Conflict::SubId { name, .. }) if name == "carol"
        ));
    }

    #[test]
    fn allocates_distinct_ranges_idempotently_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = IdAllocator::open_with(dir.path(), pool(8), HostIds::default()).unwrap();
        let web = a.allocate("web", RangeRequest::Auto).unwrap();
        let db = a.allocate("db", RangeRequest::Auto).unwrap();
        assert_eq!(web, slot_range(POOL, 0));
        assert_eq!(db, slot_range(POOL, 1));
        assert!(!web.overlaps(&db));
        assert_eq!(a.allocate("web", RangeRequest::Auto).unwrap(), web);
        assert_eq!(
            a.allocate("web", RangeRequest::Fixed(web)).unwrap(),
            web,
            "same explicit range is idempotent too"
        );
        assert!(matches!(
            a.allocate("web", fixed(POOL.host_start + 5 * RANGE_SIZE, RANGE_SIZE)),
            Err(UsernsError::OwnerHasOtherRange { .. })
        ));
        // A new allocator over the same directory sees the same state.
        drop(a);
        let mut b = IdAllocator::open_with(dir.path(), pool(8), HostIds::default()).unwrap();
        assert_eq!(b.get("web"), Some(web));
        assert_eq!(b.get("db"), Some(db));
        assert_eq!(
            b.allocate("x", RangeRequest::Auto).unwrap(),
            slot_range(POOL, 2)
        );
        assert_eq!(b.release("web").unwrap(), Some(web));
        assert_eq!(b.release("web").unwrap(), None);
        assert_eq!(b.get("web"), None);
        // The files on disk are the documented format, and no temporary file is left.
        let state = dir.path().join(STATE_DIR);
        let text = fs::read_to_string(state.join("db.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["owner"], "db");
        assert_eq!(v["host_start"], db.host_start);
        assert!(!state.join("web.json").exists());
        let mut names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["db.json", "x.json"]);
    }

    #[test]
    fn released_ranges_are_reused_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = IdAllocator::open_with(dir.path(), pool(3), HostIds::default()).unwrap();
        let first = a.allocate("a", RangeRequest::Auto).unwrap();
        a.release("a").unwrap();
        assert_ne!(a.allocate("b", RangeRequest::Auto).unwrap(), first);
        assert_ne!(a.allocate("c", RangeRequest::Auto).unwrap(), first);
        assert_eq!(a.allocate("d", RangeRequest::Auto).unwrap(), first);
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_release_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = HostIds::default();
        // One slot is taken by a host user, so only two of three are available.
        host.add_id_db(
            Path::new("/etc/passwd"),
            &format!("ldap:x:{}:1::/:/bin/sh\n", POOL.host_start + RANGE_SIZE + 7),
        )
        .unwrap();
        let mut a = IdAllocator::open_with(dir.path(), pool(3), host).unwrap();
        let r1 = a.allocate("one", RangeRequest::Auto).unwrap();
        let r2 = a.allocate("two", RangeRequest::Auto).unwrap();
        assert_eq!(
            r2,
            slot_range(POOL, 2),
            "the slot with a host user is skipped"
        );
        let err = a.allocate("three", RangeRequest::Auto).unwrap_err();
        assert!(
            matches!(
                err,
                UsernsError::PoolExhausted {
                    used: 2,
                    reserved: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("no free range of 65536 IDs"),
            "{err}"
        );
        assert_eq!(a.get("three"), None, "a failed allocation records nothing");
        a.release("one").unwrap();
        assert_eq!(a.allocate("three", RangeRequest::Auto).unwrap(), r1);
    }

    #[test]
    fn explicit_ranges_are_checked_against_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = HostIds::default();
        let s3 = POOL.host_start + 3 * RANGE_SIZE;
        host.add_subid_file(Path::new("/etc/subuid"), &format!("alice:{s3}:65536\n"))
            .unwrap();
        let s4 = POOL.host_start + 4 * RANGE_SIZE;
        host.add_id_db(Path::new("/etc/group"), &format!("big:x:{}:\n", s4 + 2000))
            .unwrap();
        let mut a = IdAllocator::open_with(dir.path(), pool(8), host).unwrap();
        let auto = a.allocate("auto", RangeRequest::Auto).unwrap();

        let err = a.allocate("x", RangeRequest::Fixed(auto)).unwrap_err();
        assert!(
            matches!(&err, UsernsError::Overlap { conflict: Conflict::Container { owner, .. }, .. } if owner == "auto"),
            "{err:?}"
        );
        assert!(err.to_string().contains("container \"auto\""), "{err}");

        let err = a.allocate("x", fixed(s3, 10)).unwrap_err();
        assert!(err.to_string().contains("/etc/subuid entry alice"), "{err}");

        // Two slots wide (1 and 2); a range in its second slot overlaps it.
        let s1 = POOL.host_start + RANGE_SIZE;
        let wide = a.allocate("wide", fixed(s1, 2 * RANGE_SIZE)).unwrap();
        assert_eq!(wide.count, 2 * RANGE_SIZE);
        assert!(matches!(
            a.allocate("y", fixed(s1 + RANGE_SIZE, RANGE_SIZE)),
            Err(UsernsError::Overlap { .. })
        ));
        // Auto never picks a slot an explicit range took, nor reserved ones.
        let next = a.allocate("auto2", RangeRequest::Auto).unwrap();
        assert_eq!(next, slot_range(POOL, 5));

        // A short explicit range below a host group's ID in the same slot is fine; one that
        // reaches it is not.
        assert!(a.allocate("short", fixed(s4, 2000)).is_ok());
        a.release("short").unwrap();
        let err = a.allocate("long", fixed(s4, 2001)).unwrap_err();
        assert!(err.to_string().contains("big (ID"), "{err}");

        assert!(matches!(
            a.allocate("far", fixed(POOL.host_start + 100 * RANGE_SIZE, RANGE_SIZE)),
            Err(UsernsError::OutsidePool { .. })
        ));
        assert!(matches!(
            a.allocate("", RangeRequest::Auto),
            Err(UsernsError::InvalidOwner { .. })
        ));
    }

    #[test]
    fn corrupt_state_is_refused() {
        let entry = |owner: &str, start: u32, version: u32| {
            format!(
                r#"{{"version":{version},"owner":"{owner}","host_start":{start},"count":65536,"explicit":false}}"#
            )
        };
        let p0 = POOL.host_start;
        for files in [
            vec![("a.json", "not json".to_string())],
            vec![("a.json", entry("a", p0, 2))],
            vec![("a.json", entry("b", p0, 1))],
            vec![("a.json", entry("a", p0, 1)), ("b.json", entry("b", p0, 1))],
            vec![("a.json", entry("a", p0 + 1, 1))],
            vec![("a.json", entry("a", 65536, 1))],
            vec![("a.json", entry("a", p0 + 4 * RANGE_SIZE, 1))],
            vec![("stray", String::new())],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join(STATE_DIR);
            fs::create_dir(&state).unwrap();
            for (name, text) in &files {
                fs::write(state.join(name), text).unwrap();
            }
            let err = IdAllocator::open_with(dir.path(), pool(4), HostIds::default()).unwrap_err();
            assert!(
                matches!(err, UsernsError::CorruptState { .. }),
                "{files:?}: {err}"
            );
        }
        // A leftover temporary file is a write that never happened: removed, not an error.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(STATE_DIR);
        fs::create_dir(&state).unwrap();
        fs::write(state.join(".a.json.tmp"), "{").unwrap();
        fs::write(state.join("b.json"), entry("b", p0, 1)).unwrap();
        let a = IdAllocator::open_with(dir.path(), pool(4), HostIds::default()).unwrap();
        assert_eq!(a.iter().count(), 1);
        assert!(!state.join(".a.json.tmp").exists());
    }

    #[test]
    fn rebuild_releases_dead_owners_and_reports_new_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = IdAllocator::open_with(dir.path(), pool(4), HostIds::default()).unwrap();
        let keep = a.allocate("keep", RangeRequest::Auto).unwrap();
        let gone = a.allocate("gone", RangeRequest::Auto).unwrap();
        let mut host = HostIds::default();
        host.add_subid_file(
            Path::new("/etc/subgid"),
            &format!("late:{}:1\n", keep.host_start + 5),
        )
        .unwrap();
        let report = a
            .rebuild(["keep", "never-allocated"], host.clone())
            .unwrap();
        assert_eq!(report.released, vec![("gone".to_string(), gone)]);
        assert_eq!(report.conflicts.len(), 1);
        assert_eq!(report.conflicts[0].0, "keep");
        assert_eq!(a.get("keep"), Some(keep));
        // Persisted: a fresh open sees only "keep".
        let b = IdAllocator::open_with(dir.path(), pool(4), host).unwrap();
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![("keep", keep)]);
    }

    #[test]
    fn failed_save_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join(STATE_DIR);
        let mut a = IdAllocator::open_with(dir.path(), pool(2), HostIds::default()).unwrap();
        fs::remove_dir(&sub).unwrap();
        let err = a.allocate("a", RangeRequest::Auto).unwrap_err();
        assert!(matches!(err, UsernsError::SaveState { .. }), "{err:?}");
        assert_eq!(a.get("a"), None);
        fs::create_dir(&sub).unwrap();
        assert_eq!(
            a.allocate("a", RangeRequest::Auto).unwrap(),
            slot_range(POOL, 0),
            "the slot went back to the queue"
        );
    }

    /// With 1000 ranges allocated, one more allocation and one release cost the same as with
    /// a handful: the in-memory work is O(1) and so is the persisted write (one small file, two
    /// fsyncs), which dominates. Prints the numbers (run with --nocapture).
    #[test]
    fn allocation_cost_with_1000_containers() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = IdAllocator::open(dir.path()).unwrap();
        let median = |mut v: Vec<std::time::Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let timed = |a: &mut IdAllocator, i: usize| {
            let t = Instant::now();
            a.allocate(&format!("c{i}"), RangeRequest::Auto).unwrap();
            t.elapsed()
        };
        let small = median((0..11).map(|i| timed(&mut a, i)).collect());
        for i in 11..1000 {
            a.allocate(&format!("c{i}"), RangeRequest::Auto).unwrap();
        }
        let t = Instant::now();
        let r = a.allocate("c1000", RangeRequest::Auto).unwrap();
        let alloc_1001 = t.elapsed();
        let large = median((1001..1012).map(|i| timed(&mut a, i)).collect());
        for i in 1001..1012 {
            a.release(&format!("c{i}")).unwrap();
        }
        let t = Instant::now();
        a.release("c500").unwrap();
        let release = t.elapsed();
        let t = Instant::now();
        let in_memory = a.next_free().unwrap();
        let pick = t.elapsed();
        a.free.push_front(in_memory);
        let t = Instant::now();
        let reopened = IdAllocator::open(dir.path()).unwrap();
        let reopen = t.elapsed();
        let size = fs::metadata(dir.path().join(STATE_DIR).join("c1.json"))
            .unwrap()
            .len();
        eprintln!(
            "userns allocator: median allocation with <=10 allocated {small:?}, with >1000 \
             {large:?}; the 1001st {alloc_1001:?}; release with 1000 allocated {release:?} \
             (of which picking the slot {pick:?}); reopen with 1000 {reopen:?}; one state \
             file {size} bytes"
        );
        assert_eq!(reopened.iter().count(), 1000);
        let ranges: HashSet<u32> = reopened.iter().map(|(_, r)| r.host_start).collect();
        assert_eq!(ranges.len(), 1000, "all distinct");
        assert!(r.host_start >= POOL.host_start);
        // Loose bound: fsync on a loaded disk can take tens of milliseconds.
        assert!(alloc_1001.as_millis() < 500, "{alloc_1001:?}");
    }

    /// The real thing, as root: a process in a fresh user namespace gets the maps, and
    /// /proc/PID/uid_map reads them back. A second write is refused by the kernel.
    #[test]
    fn write_maps_for_real() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test must run as root (CI does)"
        );
        let r = IdRange {
            host_start: 0x0010_0000,
            count: RANGE_SIZE,
        };
        let holder = UsernsHolder::new(&r.id_maps()).unwrap();
        let pid = holder.pid();
        assert_eq!(read_map(pid, MapKind::Uid).unwrap(), vec![r.id_map()]);
        assert_eq!(read_map(pid, MapKind::Gid).unwrap(), vec![r.id_map()]);
        assert_eq!(
            fs::read_to_string(format!("/proc/{pid}/setgroups")).unwrap(),
            "allow\n"
        );
        let again = write_maps(pid, &[r.id_map()], &[r.id_map()]).unwrap_err();
        assert!(again.to_string().contains("/proc/"), "{again}");
        assert!(write_maps(pid, &[], &[r.id_map()]).is_err());

        // Two lines, written in one go.
        let holder2 = UsernsHolder::new(&IdMaps {
            uid: vec![
                IdMap {
                    inside: 0,
                    outside: 0x0020_0000,
                    count: 1000,
                },
                IdMap {
                    inside: 1000,
                    outside: 0x0030_0000,
                    count: 10,
                },
            ],
            gid: vec![r.id_map()],
        })
        .unwrap();
        let m = read_map(holder2.pid(), MapKind::Uid).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].outside, 0x0030_0000);
    }
}
