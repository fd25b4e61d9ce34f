//! Disk usage of trees (layers, container writable layers, shipped directory images): the
//! allocated bytes (`st_blocks`), each inode once, never following symlinks or leaving the
//! file system. A cache keeps the size of trees that do not change (shipped images) so
//! `images` does not walk them on every call.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// What [`disk_usage`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes.
    pub bytes: u64,
    /// Sum of regular files' lengths (what a tarball of it would roughly hold).
    pub apparent: u64,
    /// Inodes counted.
    pub inodes: u64,
}

/// Walk `root` (not following symlinks, not crossing mounts). Unreadable parts count as
/// empty: this is a report, not a check.
pub fn disk_usage(root: &Path) -> Usage {
    let mut u = Usage::default();
    let Ok(top) = fs::symlink_metadata(root) else {
        return u;
    };
    let dev = top.dev();
    let mut seen = HashSet::new();
    let mut stack = vec![(root.to_path_buf(), top)];
    while let Some((p, m)) = stack.pop() {
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        u.bytes += m.blocks() * 512;
        u.inodes += 1;
        if m.is_file() {
            u.apparent += m.len();
        }
        if m.is_dir() && m.dev() == dev {
            let Ok(rd) = fs::read_dir(&p) else { continue };
            for e in rd.flatten() {
                if let Ok(em) = e.metadata() {
                    stack.push((e.path(), em));
                }
            }
        }
    }
    u
}

/// Sizes of trees, recomputed only when the top directory's mtime changes (a shipped image is
/// replaced as a whole by an install, which changes it).
#[derive(Default)]
pub struct SizeCache {
    cached: Mutex<HashMap<PathBuf, (Option<SystemTime>, Usage)>>,
}

impl SizeCache {
    pub fn usage(&self, dir: &Path) -> Usage {
        let mtime = fs::symlink_metadata(dir).and_then(|m| m.modified()).ok();
        if let Some((t, u)) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dir)
            && *t == mtime
        {
            return *u;
        }
        let u = disk_usage(dir);
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_path_buf(), (mtime, u));
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hard_links_once_and_skips_symlink_targets() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tree");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/a"), vec![1u8; 10_000]).unwrap();
        fs::hard_link(d.join("sub/a"), d.join("b")).unwrap();
        std::os::unix::fs::symlink("/usr", d.join("usr")).unwrap();
        let u = disk_usage(&d);
        assert_eq!(u.apparent, 10_000);
        assert_eq!(u.inodes, 4, "tree, sub, a (once), the symlink");
        assert!(u.bytes >= 10_000 && u.bytes < 1 << 20, "{u:?}");

        let c = SizeCache::default();
        assert_eq!(c.usage(&d), u);
        // Cached: a change below the top is not seen until the top's mtime moves.
        fs::write(d.join("sub/c"), vec![1u8; 5000]).unwrap();
        assert_eq!(c.usage(&d).apparent, 10_000);
        fs::write(d.join("d"), b"x").unwrap();
        assert_eq!(c.usage(&d).apparent, 15_001);
        assert_eq!(disk_usage(&t.path().join("none")), Usage::default());
    }
}
