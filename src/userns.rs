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

/// A range the host already uses, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reserved {
    range: IdRange,
    conflict: Conflict,
}

/// The IDs the host uses, from `subuid`, `subgid`, `passwd` and `group`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostIds {
    reserved: Vec<Reserved>,
}

impl HostIds {
    /// Read `ETC/subuid`, `ETC/subgid`, `ETC/passwd` and `ETC/group` (berthd passes `/etc`).
    /// A missing file counts as empty (many hosts have no subuid); an unreadable one or a line
    /// that cannot be parsed is an error, since its IDs would otherwise be ignored.
    pub fn load(etc: &Path) -> Result<HostIds> {
        let read = |name: &str| -> Result<(PathBuf, String)> {
            let path = etc.join(name);
            match fs::read_to_string(&path) {
                Ok(s) => Ok((path, s)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((path, String::new())),
                Err(source) => Err(UsernsError::ReadHostFile { path, source }),
            }
        };
        let mut host = HostIds::default();
        for name in ["subuid", "subgid"] {
            let (path, text) = read(name)?;
            host.add_subid_file(&path, &text)?;
        }
        for name in ["passwd", "group"] {
            let (path, text) = read(name)?;
            host.add_id_db(&path, &text)?;
        }
        Ok(host)
    }

    /// Parse an `/etc/subuid`-format file: `name:start:count` per line (name may be numeric);
    /// `#` comments and blank lines are skipped.
    pub fn add_subid_file(&mut self, path: &Path, text: &str) -> Result<()> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| UsernsError::ParseHostFile {
                path: path.to_owned(),
                line: i + 1,
                reason: format!("{reason} in {line:?} (expected name:start:count)"),
            };
            let mut fields = line.split(':');
            let (Some(name), Some(start), Some(count), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("wrong number of fields"));
            };
            let start: u32 = start.parse().map_err(|_| bad("bad start"))?;
            let count: u64 = count.parse().map_err(|_| bad("bad count"))?;
            // A count reaching past 2^32 reserves everything from start up.
            let count = count.min(u64::from(u32::MAX) + 1 - u64::from(start));
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            let range = IdRange {
                host_start: start,
                count,
            };
            self.reserved.push(Reserved {
                range,
                conflict: Conflict::SubId {
                    file: path.to_owned(),
                    name: name.to_owned(),
                    range,
                },
            });
        }
        Ok(())
    }

    /// Parse an `/etc/passwd`- or `/etc/group`-format file: the third field is the ID. NIS
    /// compatibility lines (`+…`, `-…`), comments and blank lines are skipped.
    pub fn add_id_db(&mut self, path: &Path, text: &str) -> Result<()> {
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with(['#', '+', '-']) {
                continue;
            }
            let mut fields = trimmed.split(':');
            let name = fields.next().unwrap_or_default();
            let id = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            let Some(id) = id else {
                return Err(UsernsError::ParseHostFile {
                    path: path.to_owned(),
                    line: i + 1,
                    reason: format!("no numeric ID in the third field of {trimmed:?}"),
                });
            };
            self.reserved.push(Reserved {
                range: IdRange {
                    host_start: id,
                    count: 1,
                },
                conflict: Conflict::HostId {
                    file: path.to_owned(),
                    name: name.to_owned(),
                    id,
                },
            });
        }
        Ok(())
    }

    fn conflict(&self, range: &IdRange) -> Option<&Conflict> {
        self.reserved
            .iter()
            .find(|r| r.range.overlaps(range))
            .map(|r| &r.conflict)
    }
}

/// One slot of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// Overlaps a host range; never handed out.
    Reserved,
    Used,
}

/// The persisted record of one owner's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    host_start: u32,
    count: u32,
    /// Asked for with `UID:COUNT` rather than picked.
    explicit: bool,
}

impl Entry {
    fn range(&self) -> IdRange {
        IdRange {
            host_start: self.host_start,
            count: self.count,
        }
    }
}

/// What `OWNER.json` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    version: u32,
    /// Repeats the file name, so a renamed or copied file is detected.
    owner: String,
    host_start: u32,
    count: u32,
    explicit: bool,
}

const STATE_VERSION: u32 = 1;

/// What [`IdAllocator::rebuild`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Ranges of owners that no longer exist, now released.
    pub released: Vec<(String, IdRange)>,
    /// Ranges of live owners that now overlap a host range (someone added a subuid entry or a
    /// user since); kept, since the container's files are owned by them, but worth a warning.
    pub conflicts: Vec<(String, IdRange, Conflict)>,
}

/// Persistent allocator of container ID ranges.
#[derive(Debug)]
pub struct IdAllocator {
    /// `DIR/userns-ranges`.
    dir: PathBuf,
    pool: IdRange,
    host: HostIds,
    ranges: BTreeMap<String, Entry>,
    slots: Vec<Slot>,
    /// Owner of each used slot (index into `slots`).
    slot_owner: HashMap<u32, String>,
    /// Free slots, oldest-freed first; may hold stale entries (slots taken by an explicit
    /// range since), which `allocate` skips.
    free: VecDeque<u32>,
}

impl IdAllocator {
    /// Open (or start) the state in `dir` for systemd's container span, with the host's IDs
    /// read from `/etc`.
    pub fn open(dir: &Path) -> Result<IdAllocator> {
        IdAllocator::open_with(dir, POOL, HostIds::load(Path::new("/etc"))?)
    }

    /// Open with an explicit pool (aligned to, and a multiple of, [`RANGE_SIZE`], inside
    /// [`POOL`]) and host IDs; tests use small pools.
    pub fn open_with(dir: &Path, pool: IdRange, host: HostIds) -> Result<IdAllocator> {
        let dir = dir.join(STATE_DIR);
        if !pool.host_start.is_multiple_of(RANGE_SIZE)
            || !pool.count.is_multiple_of(RANGE_SIZE)
            || pool.count == 0
            || !POOL.contains_range(&pool)
        {
            return Err(UsernsError::OutsidePool {
                range: pool,
                pool: POOL,
            });
        }
        let ranges = read_entries(&dir)?;
        let mut alloc = IdAllocator {
            dir: dir.clone(),
            pool,
            host,
            ranges: BTreeMap::new(),
            slots: Vec::new(),
            slot_owner: HashMap::new(),
            free: VecDeque::new(),
        };
        alloc
            .index(ranges)
            .map_err(|reason| UsernsError::CorruptState { path: dir, reason })?;
        Ok(alloc)
    }

    /// Rebuild the slot table from `ranges` and the host IDs.
    fn index(&mut self, ranges: BTreeMap<String, Entry>) -> std::result::Result<(), String> {
        let nslots = (self.pool.count / RANGE_SIZE) as usize;
        self.slots = vec![Slot::Free; nslots];
        self.slot_owner.clear();
        // O(host entries + slots), not their product.
        for reserved in &self.host.reserved {
            for s in slots_touching(self.pool, reserved.range) {
                self.slots[s as usize] = Slot::Reserved;
            }
        }
        for (owner, entry) in &ranges {
            let r = entry.range();
            if !r.host_start.is_multiple_of(RANGE_SIZE)
                || r.count == 0
                || r.count > MAX_COUNT
                || !self.pool.contains_range(&r)
            {
                return Err(format!("range {r} of {owner:?} is not a valid slot range"));
            }
            for s in slots_of(self.pool, r) {
                if let Some(other) = self.slot_owner.insert(s, owner.clone()) {
                    return Err(format!("{owner:?} and {other:?} overlap"));
                }
                // A range that now overlaps a host range stays the owner's (rebuild reports it).
                self.slots[s as usize] = Slot::Used;
            }
        }
        self.ranges = ranges;
        self.free = (0..nslots as u32)
            .filter(|&s| self.slots[s as usize] == Slot::Free)
            .collect();
        Ok(())
    }

    /// The range `owner` holds, if any.
    pub fn get(&self, owner: &str) -> Option<IdRange> {
        self.ranges.get(owner).map(Entry::range)
    }

    /// Every owner and its range, by owner name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, IdRange)> {
        self.ranges.iter().map(|(o, e)| (o.as_str(), e.range()))
    }

    /// The pool this allocator hands ranges out of.
    pub fn pool(&self) -> IdRange {
        self.pool
    }

    /// Give `owner` a range, persisted before it is returned. Idempotent: an owner that already
    /// has a range gets it back (for `Auto`, or `Fixed` with the same range); asking for a
    /// different explicit range is an error (release first).
    pub fn allocate(&mut self, owner: &str, request: RangeRequest) -> Result<IdRange> {
        crate::name::validate(owner).map_err(|reason| UsernsError::InvalidOwner {
            owner: owner.to_owned(),
            reason,
        })?;
        if let Some(existing) = self.get(owner) {
            return match request {
                RangeRequest::Auto => Ok(existing),
                RangeRequest::Fixed(r) if r == existing => Ok(existing),
                RangeRequest::Fixed(requested) => Err(UsernsError::OwnerHasOtherRange {
                    owner: owner.to_owned(),
                    existing,
                    requested,
                }),
            };
        }
        let (range, explicit, popped) = match request {
            RangeRequest::Fixed(r) => (self.check_fixed(r)?, true, None),
            RangeRequest::Auto => {
                let slot = self.next_free()?;
                (slot_range(self.pool, slot), false, Some(slot))
            }
        };
        let entry = Entry {
            host_start: range.host_start,
            count: range.count,
            explicit,
        };
        if let Err(e) = self.save(owner, entry) {
            if let Some(slot) = popped {
                // Not taken after all: back to the front, where it was.
                self.free.push_front(slot);
            }
            return Err(e);
        }
        self.ranges.insert(owner.to_owned(), entry);
        for s in slots_of(self.pool, range) {
            self.slots[s as usize] = Slot::Used;
            self.slot_owner.insert(s, owner.to_owned());
        }
        Ok(range)
    }

    /// The first queued slot that is still free (stale queue entries are dropped).
    fn next_free(&mut self) -> Result<u32> {
        while let Some(s) = self.free.pop_front() {
            if self.slots[s as usize] == Slot::Free {
                return Ok(s);
            }
        }
        let used = self.slots.iter().filter(|s| **s == Slot::Used).count();
        Err(UsernsError::PoolExhausted {
            pool: self.pool,
            used,
            reserved: self.slots.len() - used,
        })
    }

    fn check_fixed(&self, r: IdRange) -> Result<IdRange> {
        if !r.host_start.is_multiple_of(RANGE_SIZE) || r.count == 0 || r.count > MAX_COUNT {
            return Err(UsernsError::InvalidMode {
                value: format!("{}:{}", r.host_start, r.count),
                reason: format!("UID must be a multiple of {RANGE_SIZE} and COUNT 1..={MAX_COUNT}"),
            });
        }
        if !self.pool.contains_range(&r) {
            return Err(UsernsError::OutsidePool {
                range: r,
                pool: self.pool,
            });
        }
        for s in slots_of(self.pool, r) {
            if let Some(owner) = self.slot_owner.get(&s) {
                return Err(UsernsError::Overlap {
                    range: r,
                    conflict: Conflict::Container {
                        owner: owner.clone(),
                        range: self.ranges[owner].range(),
                    },
                });
            }
        }
        // Checked against the exact range (not whole slots): a short explicit range may sit
        // below a host ID in the same slot.
        if let Some(conflict) = self.host.conflict(&r) {
            return Err(UsernsError::Overlap {
                range: r,
                conflict: conflict.clone(),
            });
        }
        Ok(r)
    }

    /// Give `owner`'s range back (persisted first). Returns the range it held; releasing an
    /// owner without one is not an error.
    pub fn release(&mut self, owner: &str) -> Result<Option<IdRange>> {
        let Some(entry) = self.ranges.get(owner).copied() else {
            return Ok(None);
        };
        self.unlink(owner)?;
        self.sync_dir()?;
        self.ranges.remove(owner);
        self.free_slots(entry.range());
        Ok(Some(entry.range()))
    }

    fn free_slots(&mut self, range: IdRange) {
        for s in slots_of(self.pool, range) {
            self.slot_owner.remove(&s);
            self.slots[s as usize] = if self.host.conflict(&slot_range(self.pool, s)).is_some() {
                Slot::Reserved
            } else {
                self.free.push_back(s);
                Slot::Free
            };
        }
    }

    /// After a restart or a change of the host's files: release the ranges of owners not in
    /// `live` (containers that no longer exist), take `host` as the host's IDs from now on,
    /// and report live ranges that now overlap host IDs. One write, only if something changed.
    pub fn rebuild<'a>(
        &mut self,
        live: impl IntoIterator<Item = &'a str>,
        host: HostIds,
    ) -> Result<RebuildReport> {
        let live: HashSet<&str> = live.into_iter().collect();
        let mut report = RebuildReport::default();
        let stale: Vec<String> = self
            .ranges
            .keys()
            .filter(|o| !live.contains(o.as_str()))
            .cloned()
            .collect();
        for owner in stale {
            self.unlink(&owner)?;
            if let Some(entry) = self.ranges.remove(&owner) {
                report.released.push((owner, entry.range()));
            }
        }
        if !report.released.is_empty() {
            self.sync_dir()?;
        }
        for (owner, entry) in &self.ranges {
            if let Some(c) = host.conflict(&entry.range()) {
                report
                    .conflicts
                    .push((owner.clone(), entry.range(), c.clone()));
            }
        }
        self.host = host;
        let ranges = std::mem::take(&mut self.ranges);
        self.index(ranges)
            .map_err(|reason| UsernsError::CorruptState {
                path: self.dir.clone(),
                reason,
            })?;
        Ok(report)
    }

    fn entry_path(&self, owner: &str) -> PathBuf {
        self.dir.join(format!("{owner}.json"))
    }

    /// Atomically write `owner`'s file.
    fn save(&self, owner: &str, entry: Entry) -> Result<()> {
        let file = EntryFile {
            version: STATE_VERSION,
            owner: owner.to_owned(),
            host_start: entry.host_start,
            count: entry.count,
            explicit: entry.explicit,
        };
        let bytes = serde_json::to_vec(&file).expect("plain data serializes");
        let path = self.entry_path(owner);
        write_atomic(&path, &bytes).map_err(|source| UsernsError::SaveState { path, source })
    }

    fn unlink(&self, owner: &str) -> Result<()> {
        let path = self.entry_path(owner);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(UsernsError::SaveState { path, source: e })
            }
            _ => Ok(()),
        }
    }

    fn sync_dir(&self) -> Result<()> {
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| UsernsError::SaveState {
                path: self.dir.clone(),
                source,
            })
    }
}

/// Read every `OWNER.json` in `dir` (created if missing); remove leftover temporary files.
fn read_entries(dir: &Path) -> Result<BTreeMap<String, Entry>> {
    let read_err = |path: &Path, source| UsernsError::ReadState {
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| read_err(dir, e))?;
    let mut ranges = BTreeMap::new();
    for dent in fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
        let dent = dent.map_err(|e| read_err(dir, e))?;
        let path = dent.path();
        let corrupt = |reason: String| UsernsError::CorruptState {
            path: path.clone(),
            reason,
        };
        let name = dent.file_name();
        let Some(name) = name.to_str() else {
            return Err(corrupt("file name is not UTF-8".into()));
        };
        if name.starts_with('.') && name.ends_with(".tmp") {
            // A write that crashed before its rename: never took effect.
            fs::remove_file(&path).map_err(|e| read_err(&path, e))?;
            continue;
        }
        let Some(owner) = name.strip_suffix(".json") else {
            return Err(corrupt("unexpected file".into()));
        };
        let bytes = fs::read(&path).map_err(|e| read_err(&path, e))?;
        let file: EntryFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != STATE_VERSION {
            return Err(corrupt(format!("unknown version {}", file.version)));
        }
        if file.owner != owner || crate::name::validate(owner).is_err() {
            return Err(corrupt(format!(
                "owner {:?} does not match the file name",
                file.owner
            )));
        }
        ranges.insert(
            owner.to_owned(),
            Entry {
                host_start: file.host_start,
                count: file.count,
                explicit: file.explicit,
            },
        );
    }
    Ok(ranges)
}

fn slot_range(pool: IdRange, slot: u32) -> IdRange {
    IdRange {
        host_start: pool.host_start + slot * RANGE_SIZE,
        count: RANGE_SIZE,
    }
}

/// The slots of `pool` that share at least one ID with `r` (which may lie anywhere).
fn slots_touching(pool: IdRange, r: IdRange) -> std::ops::Range<u32> {
    if !pool.overlaps(&r) {
        return 0..0;
    }
    let lo = u64::from(r.host_start.max(pool.host_start)) - u64::from(pool.host_start);
    let hi = r.end().min(pool.end()) - u64::from(pool.host_start);
    (lo / u64::from(RANGE_SIZE)) as u32..hi.div_ceil(u64::from(RANGE_SIZE)) as u32
}

/// The slots `r` (inside `pool`, aligned) covers.
fn slots_of(pool: IdRange, r: IdRange) -> std::ops::Range<u32> {
    let first = (r.host_start - pool.host_start) / RANGE_SIZE;
    first..first + r.count.div_ceil(RANGE_SIZE)
}

/// Write `bytes` to `path` so that a crash leaves either the old or the new content: a
/// temporary file beside it, fsync, rename over, fsync of the directory (rename(2) is atomic;
/// the directory fsync makes it durable).
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

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
