//! The allocator of container ID ranges: fixed-size slots of the pool, one durable file per owner,
//! rebuilt from the files and the running containers after a restart.

use super::*;

/// One slot of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Free,
    /// Overlaps a host range; never handed out.
    Reserved,
    Used,
}

/// The persisted record of one owner's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    pub(super) host_start: u32,
    pub(super) count: u32,
    /// Asked for with `UID:COUNT` rather than picked.
    pub(super) explicit: bool,
}

impl Entry {
    pub(super) fn range(&self) -> IdRange {
        IdRange {
            host_start: self.host_start,
            count: self.count,
        }
    }
}

/// What `OWNER.json` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntryFile {
    pub(super) version: u32,
    /// Repeats the file name, so a renamed or copied file is detected.
    pub(super) owner: String,
    pub(super) host_start: u32,
    pub(super) count: u32,
    pub(super) explicit: bool,
}

pub(super) const STATE_VERSION: u32 = 1;

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
    pub(super) dir: PathBuf,
    pub(super) pool: IdRange,
    pub(super) host: HostIds,
    pub(super) ranges: BTreeMap<String, Entry>,
    pub(super) slots: Vec<Slot>,
    /// Owner of each used slot (index into `slots`).
    pub(super) slot_owner: HashMap<u32, String>,
    /// Free slots, oldest-freed first; may hold stale entries (slots taken by an explicit
    /// range since), which `allocate` skips.
    pub(super) free: VecDeque<u32>,
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
    pub(super) fn index(
        &mut self,
        ranges: BTreeMap<String, Entry>,
    ) -> std::result::Result<(), String> {
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
    pub(super) fn next_free(&mut self) -> Result<u32> {
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

    pub(super) fn check_fixed(&self, r: IdRange) -> Result<IdRange> {
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

    pub(super) fn free_slots(&mut self, range: IdRange) {
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

    pub(super) fn entry_path(&self, owner: &str) -> PathBuf {
        self.dir.join(format!("{owner}.json"))
    }

    /// Atomically write `owner`'s file.
    pub(super) fn save(&self, owner: &str, entry: Entry) -> Result<()> {
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

    pub(super) fn unlink(&self, owner: &str) -> Result<()> {
        let path = self.entry_path(owner);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(UsernsError::SaveState { path, source: e })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn sync_dir(&self) -> Result<()> {
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| UsernsError::SaveState {
                path: self.dir.clone(),
                source,
            })
    }
}

/// Read every `OWNER.json` in `dir` (created if missing); remove leftover temporary files.
pub(super) fn read_entries(dir: &Path) -> Result<BTreeMap<String, Entry>> {
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

pub(super) fn slot_range(pool: IdRange, slot: u32) -> IdRange {
    IdRange {
        host_start: pool.host_start + slot * RANGE_SIZE,
        count: RANGE_SIZE,
    }
}

/// The slots of `pool` that share at least one ID with `r` (which may lie anywhere).
pub(super) fn slots_touching(pool: IdRange, r: IdRange) -> std::ops::Range<u32> {
    if !pool.overlaps(&r) {
        return 0..0;
    }
    let lo = u64::from(r.host_start.max(pool.host_start)) - u64::from(pool.host_start);
    let hi = r.end().min(pool.end()) - u64::from(pool.host_start);
    (lo / u64::from(RANGE_SIZE)) as u32..hi.div_ceil(u64::from(RANGE_SIZE)) as u32
}

/// The slots `r` (inside `pool`, aligned) covers.
pub(super) fn slots_of(pool: IdRange, r: IdRange) -> std::ops::Range<u32> {
    let first = (r.host_start - pool.host_start) / RANGE_SIZE;
    first..first + r.count.div_ceil(RANGE_SIZE)
}

/// Write `bytes` to `path` so that a crash leaves either the old or the new content: a
/// temporary file beside it, fsync, rename over, fsync of the directory (rename(2) is atomic;
/// the directory fsync makes it durable).
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
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
