//! The MCS category allocator: one unique pair of categories per container, persisted under
//! berthd's state directory.
//!
//! Pairs are handed out in a fixed order ((c0,c1), (c0,c2), (c1,c2), (c0,c3), …) by a cursor
//! that skips pairs in use and wraps around after (c1022,c1023). So allocating is O(1)
//! (amortized: the cursor passes each held pair at most once per lap of 523,776 pairs), and a
//! freed pair is not handed out again until the cursor has gone all the way round, which
//! keeps files a removed container left behind (volumes, copies) out of reach of the next one
//! for as long as possible.
//!
//! An explicit `level:s0:cX,cY` is *reserved* instead: the cursor never hands out a reserved
//! pair, while two containers given the same level on purpose may share it (a use count).
//!
//! # Persistence and crash safety
//! The state is one JSON file, `<dir>/selinux-mcs.json`, rewritten after every change through
//! a temporary file that is fsynced and renamed over it (then the directory is fsynced): a
//! crash leaves the old or the new file, never a mix. If the file is lost or damaged anyway,
//! [`McsAllocator::rebuild`] makes it again from the pairs the containers' own records hold.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SelinuxError;
use super::level::Pair;

/// The file name under the directory the caller gives.
pub const STATE_FILE: &str = "selinux-mcs.json";
const VERSION: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    /// The next pair the cursor will try.
    cursor: Pair,
    /// Owner (container id) → its pair.
    owners: BTreeMap<String, Pair>,
}

/// What [`Stored`] is written from, borrowing the allocator's map (in hash order: sorting
/// would be the one part of a save that grows with the number of pairs held).
#[derive(Serialize)]
struct StoredRef<'a> {
    version: u32,
    cursor: Pair,
    owners: &'a HashMap<String, Pair>,
}

/// See the module documentation. Not shared between processes: berthd holds the only one
/// (behind its own lock).
#[derive(Debug)]
pub struct McsAllocator {
    path: PathBuf,
    owners: HashMap<String, Pair>,
    /// How many owners hold each pair (more than one only for explicit shared levels).
    used: HashMap<Pair, u32>,
    cursor: Pair,
}

impl McsAllocator {
    /// Load `<dir>/selinux-mcs.json`, or start empty when it does not exist (nothing is written
    /// until the first change). A damaged file is an error: rebuild from the containers then.
    pub fn open(dir: &Path) -> Result<McsAllocator, SelinuxError> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(McsAllocator {
                    path,
                    owners: HashMap::new(),
                    used: HashMap::new(),
                    cursor: Pair::FIRST,
                });
            }
            Err(source) => return Err(SelinuxError::Io { path, source }),
        };
        let stored: Stored = serde_json::from_slice(&text).map_err(|e| SelinuxError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if stored.version != VERSION {
            return Err(SelinuxError::Corrupt {
                path,
                reason: format!("version {} (this berth reads {VERSION})", stored.version),
            });
        }
        let mut alloc = McsAllocator {
            path,
            owners: HashMap::with_capacity(stored.owners.len()),
            used: HashMap::with_capacity(stored.owners.len()),
            cursor: stored.cursor,
        };
        for (owner, pair) in stored.owners {
            alloc.hold(owner, pair);
        }
        Ok(alloc)
    }

    /// Replace the state in `<dir>` with the pairs the containers recorded (after the file
    /// was lost or damaged) and write it. The cursor resumes after the highest pair in use.
    /// Two containers may share a pair (explicit levels); one owner with two pairs is an error.
    pub fn rebuild(
        dir: &Path,
        used: impl Iterator<Item = (String, Pair)>,
    ) -> Result<McsAllocator, SelinuxError> {
        let mut alloc = McsAllocator {
            path: dir.join(STATE_FILE),
            owners: HashMap::new(),
            used: HashMap::new(),
            cursor: Pair::FIRST,
        };
        let mut last: Option<Pair> = None;
        for (owner, pair) in used {
            if let Some(&had) = alloc.owners.get(&owner) {
                if had != pair {
                    return Err(SelinuxError::RebuildConflict { owner, had, pair });
                }
                continue;
            }
            if last.is_none_or(|l| pair.index() > l.index()) {
                last = Some(pair);
            }
            alloc.hold(owner, pair);
        }
        alloc.cursor = last.map_or(Pair::FIRST, Pair::next);
        alloc.save()?;
        Ok(alloc)
    }

    fn hold(&mut self, owner: String, pair: Pair) {
        self.owners.insert(owner, pair);
        *self.used.entry(pair).or_insert(0) += 1;
    }

    fn release(&mut self, owner: &str) -> Option<Pair> {
        let pair = self.owners.remove(owner)?;
        match self.used.get_mut(&pair) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.used.remove(&pair);
            }
        }
        Some(pair)
    }

    /// The next free pair from the cursor, and how many pairs were looked at.
    fn pick(&self) -> Result<(Pair, u32), SelinuxError> {
        let mut candidate = self.cursor;
        let mut looked = 1;
        while self.used.contains_key(&candidate) {
            candidate = candidate.next();
            looked += 1;
            if candidate == self.cursor {
                return Err(SelinuxError::Exhausted);
            }
        }
        Ok((candidate, looked))
    }

    /// The pair of `owner`: its existing one, or a new one no other owner holds, persisted
    /// before this returns. On a write error nothing changes.
    pub fn allocate(&mut self, owner: &str) -> Result<Pair, SelinuxError> {
        if let Some(&pair) = self.owners.get(owner) {
            return Ok(pair);
        }
        let (pair, _) = self.pick()?;
        let cursor = self.cursor;
        self.hold(owner.to_string(), pair);
        self.cursor = pair.next();
        if let Err(e) = self.save() {
            self.release(owner);
            self.cursor = cursor;
            return Err(e);
        }
        Ok(pair)
    }

    /// Record an explicit pair for `owner` (from `label=level:s0:cX,cY`): automatic
    /// allocation never hands it out while held; other explicit owners may share it.
    pub fn reserve(&mut self, owner: &str, pair: Pair) -> Result<(), SelinuxError> {
        match self.owners.get(owner) {
            Some(&had) if had == pair => return Ok(()),
            Some(&had) => {
                return Err(SelinuxError::OwnerHasPair {
                    owner: owner.to_string(),
                    had,
                });
            }
            None => {}
        }
        self.hold(owner.to_string(), pair);
        if let Err(e) = self.save() {
            self.release(owner);
            return Err(e);
        }
        Ok(())
    }

    /// Give `owner`'s pair back (container removed); `None` if it held none.
    pub fn free(&mut self, owner: &str) -> Result<Option<Pair>, SelinuxError> {
        let Some(pair) = self.release(owner) else {
            return Ok(None);
        };
        if let Err(e) = self.save() {
            self.hold(owner.to_string(), pair);
            return Err(e);
        }
        Ok(Some(pair))
    }

    pub fn get(&self, owner: &str) -> Option<Pair> {
        self.owners.get(owner).copied()
    }

    /// How many owners hold a pair.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// For the benchmark (benches/mcs.rs): the in-memory search of the next allocation alone,
    /// and how many pairs it looked at; nothing is held or written.
    #[doc(hidden)]
    pub fn probe_pick(&self) -> Result<(Pair, u32), SelinuxError> {
        self.pick()
    }

    /// For the benchmark (benches/mcs.rs): what a save would write, without writing it.
    #[doc(hidden)]
    pub fn probe_serialize(&self) -> Vec<u8> {
        self.serialize()
    }

    /// Write the state atomically: temporary file, fsync, rename, fsync of the directory.
    fn serialize(&self) -> Vec<u8> {
        let stored = StoredRef {
            version: VERSION,
            cursor: self.cursor,
            owners: &self.owners,
        };
        serde_json::to_vec(&stored).expect("serializing strings and pairs")
    }

    fn save(&self) -> Result<(), SelinuxError> {
        let text = self.serialize();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SelinuxError::Io { path, source }
        };
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            // The temporary file is ours and useless now; its removal failing changes nothing.
            std::fs::remove_file(&tmp).ok();
            return Err(io(&tmp)(e));
        }
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn pairs_are_unique_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = McsAllocator::open(dir.path()).unwrap();
        assert!(!dir.path().join(STATE_FILE).exists(), "nothing written yet");
        let mut seen = HashSet::new();
        for i in 0..300 {
            let p = a.allocate(&format!("c{i}")).unwrap();
            assert!(seen.insert(p), "{p} handed out twice");
        }
        assert_eq!(
            a.allocate("c7").unwrap(),
            a.get("c7").unwrap(),
            "idempotent"
        );
        assert_eq!(a.len(), 300);
        assert_eq!(a.allocate("c0").unwrap().to_string(), "c0,c1");
        assert_eq!(a.get("c1").unwrap().to_string(), "c0,c2");
        assert_eq!(a.get("c2").unwrap().to_string(), "c1,c2");

        // A second allocator (a restarted berthd) sees the same pairs and continues after them.
        let mut b = McsAllocator::open(dir.path()).unwrap();
        for i in 0..300 {
            assert_eq!(b.get(&format!("c{i}")), a.get(&format!("c{i}")));
        }
        let next = b.allocate("new").unwrap();
        assert!(!seen.contains(&next));
        assert_eq!(next.index(), 300);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE]);
    }

    #[test]
    fn freed_pairs_return_only_after_a_full_lap() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = McsAllocator::open(dir.path()).unwrap();
        let first = a.allocate("one").unwrap();
        assert_eq!(a.free("one").unwrap(), Some(first));
        assert_eq!(a.free("one").unwrap(), None);
        assert_ne!(a.allocate("two").unwrap(), first, "not reused at once");
        assert_eq!(McsAllocator::open(dir.path()).unwrap().get("one"), None);
        // Near the end of the lap the cursor wraps and reaches the freed pair again.
        a.cursor = Pair::new(1022, 1023).unwrap();
        assert_eq!(a.allocate("last").unwrap().to_string(), "c1022,c1023");
        assert_eq!(a.allocate("wrapped").unwrap(), first);
    }

    #[test]
    fn reserved_pairs_are_skipped_and_may_be_shared() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = McsAllocator::open(dir.path()).unwrap();
        let (p01, p02, p12) = (
            Pair::new(0, 1).unwrap(),
            Pair::new(0, 2).unwrap(),
            Pair::new(1, 2).unwrap(),
        );
        a.reserve("x", p01).unwrap();
        a.reserve("y", p01).unwrap();
        a.reserve("y", p01).unwrap();
        assert!(matches!(
            a.reserve("y", p02),
            Err(SelinuxError::OwnerHasPair { .. })
        ));
        a.reserve("z", p02).unwrap();
        assert_eq!(a.allocate("auto").unwrap(), p12);
        // Freeing one of two sharers keeps the pair reserved.
        a.free("x").unwrap();
        a.cursor = Pair::FIRST;
        assert_eq!(a.pick().unwrap().0, Pair::new(0, 3).unwrap());
        a.free("y").unwrap();
        assert_eq!(a.pick().unwrap().0, p01);
    }

    #[test]
    fn rebuild_from_container_records() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{ torn").unwrap();
        assert!(matches!(
            McsAllocator::open(dir.path()),
            Err(SelinuxError::Corrupt { .. })
        ));
        let records = [
            ("a".to_string(), Pair::new(5, 9).unwrap()),
            ("b".to_string(), Pair::new(0, 1).unwrap()),
            ("c".to_string(), Pair::new(5, 9).unwrap()), // shared on purpose
        ];
        let mut a = McsAllocator::rebuild(dir.path(), records.clone().into_iter()).unwrap();
        assert_eq!(a.len(), 3);
        let next = a.allocate("d").unwrap();
        assert_eq!(next.index(), Pair::new(5, 9).unwrap().index() + 1);
        let reopened = McsAllocator::open(dir.path()).unwrap();
        assert_eq!(reopened.get("a"), Some(Pair::new(5, 9).unwrap()));
        assert_eq!(reopened.get("d"), Some(next));
        let conflict = [
            ("a".to_string(), Pair::new(5, 9).unwrap()),
            ("a".to_string(), Pair::new(1, 9).unwrap()),
        ];
        assert!(matches!(
            McsAllocator::rebuild(dir.path(), conflict.into_iter()),
            Err(SelinuxError::RebuildConflict { .. })
        ));
    }

    #[test]
    fn exhaustion_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = McsAllocator::open(dir.path()).unwrap();
        let mut p = Pair::FIRST;
        loop {
            a.used.insert(p, 1);
            p = p.next();
            if p == Pair::FIRST {
                break;
            }
        }
        assert!(matches!(
            a.allocate("one-too-many"),
            Err(SelinuxError::Exhausted)
        ));
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let mut a = McsAllocator::open(&gone).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        assert!(matches!(a.allocate("x"), Err(SelinuxError::Io { .. })));
        assert_eq!(a.get("x"), None);
        assert_eq!(a.cursor, Pair::FIRST);
    }

    /// O(1): with 1000 pairs held, the next allocation looks at one candidate, and even with
    /// 1000 reserved pairs right at the cursor it looks at each of them once, not again.
    #[test]
    fn allocation_work_does_not_grow_with_pairs_held() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = McsAllocator::open(dir.path()).unwrap();
        for i in 0..1000 {
            a.hold(format!("c{i}"), a.pick().unwrap().0);
            a.cursor = a.pick().unwrap().0.next();
        }
        assert_eq!(a.pick().unwrap().1, 1);
        // 1000 explicit reservations just ahead of the cursor: one pass over them, then 1.
        let mut p = a.cursor;
        for i in 0..1000 {
            a.hold(format!("r{i}"), p);
            p = p.next();
        }
        assert_eq!(a.pick().unwrap().1, 1001);
        a.allocate("after").unwrap();
        assert_eq!(a.pick().unwrap().1, 1);
    }
}
