//! Flattened root file system tarballs: of an image (its layers merged the way overlayfs
//! merges them) or of any directory tree (a container's merged root).
//!
//! Trees are walked fd-relative (`openat` with `O_NOFOLLOW`, names from `getdents`), so a
//! symlink inside the tree is written as a symlink and never followed, even if the tree changes
//! while it is read. Entries come out sorted by name, so the same tree gives the same bytes.
//! Hard links within the tree become tar hard links; sockets are left out; `user.*` and
//! `security.capability` xattrs are written as PAX `SCHILY.xattr.*` records.
//!
//! Merging layers, top layer first: an entry is written from the topmost layer that has it; a
//! whiteout (0:0 character device) hides the name in the layers below; an opaque directory
//! hides the lower layers' contents of that directory; a non-directory hides everything below
//! its name in lower layers.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use tar::{EntryType, Header};
use xattr::FileExt;

use super::ErrorKind;
use super::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading {path:?}: {source}")]
    Read { path: String, source: io::Error },
    #[error("writing the tarball: {0}")]
    Write(io::Error),
}

impl ExportError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExportError::Store(e) => e.kind(),
            _ => ErrorKind::Failed,
        }
    }
}

fn read_err(path: &[u8], e: impl Into<io::Error>) -> ExportError {
    ExportError::Read {
        path: String::from_utf8_lossy(path).into_owned(),
        source: e.into(),
    }
}

fn os(b: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(b)
}

fn fmt_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// What the walker should do with a node.
enum Action {
    /// Write it (and descend if it is a directory).
    Emit,
    /// Do not write it, but descend (a directory an upper layer already wrote).
    Descend,
    /// Neither.
    Skip,
}

struct Node<'a> {
    dir: &'a OwnedFd,
    name: &'a [u8],
    path: &'a [u8],
    st: &'a FileStat,
}

fn walk(
    dir: &OwnedFd,
    prefix: &[u8],
    f: &mut dyn FnMut(&Node) -> Result<Action, ExportError>,
) -> Result<(), ExportError> {
    let mut names: Vec<Vec<u8>> = {
        let fd = dir.try_clone().map_err(|e| read_err(prefix, e))?;
        let mut d = nix::dir::Dir::from_fd(fd).map_err(|e| read_err(prefix, e))?;
        let mut v = Vec::new();
        for e in d.iter() {
            let e = e.map_err(|e| read_err(prefix, e))?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                v.push(n.to_vec());
            }
        }
        v
    };
    names.sort();
    for name in names {
        let path: Vec<u8> = if prefix.is_empty() {
            name.clone()
        } else {
            [prefix, b"/", &name].concat()
        };
        let st = match nix::sys::stat::fstatat(dir, os(&name), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone meanwhile (a live container root): nothing to write.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(read_err(&path, e)),
        };
        let node = Node {
            dir,
            name: &name,
            path: &path,
            st: &st,
        };
        match f(&node)? {
            Action::Skip => {}
            Action::Emit | Action::Descend if fmt_of(&st) == SFlag::S_IFDIR => {
                let sub = nix::fcntl::openat(
                    dir,
                    os(&name),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| read_err(&path, e))?;
                walk(&sub, &path, f)?;
            }
            Action::Emit | Action::Descend => {}
        }
    }
    Ok(())
}

/// Writes nodes as tar entries.
struct Writer<W: Write> {
    tar: tar::Builder<W>,
    /// First path written for each multiply-linked inode.
    links: HashMap<(u64, u64), Vec<u8>>,
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len += 1;
    }
    out.extend_from_slice(format!("{len} ").as_bytes());
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

impl<W: Write> Writer<W> {
    fn new(out: W) -> Self {
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        Writer {
            tar,
            links: HashMap::new(),
        }
    }

    fn header(st: &FileStat, kind: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(st.st_mode & 0o7777);
        h.set_uid(st.st_uid as u64);
        h.set_gid(st.st_gid as u64);
        h.set_mtime(st.st_mtime.max(0) as u64);
        h.set_size(0);
        h
    }

    fn write_xattrs(&mut self, f: &File, path: &[u8]) -> Result<(), ExportError> {
        let mut data = Vec::new();
        let names = match f.list_xattr() {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(read_err(path, e)),
        };
        for n in names {
            let nb = n.as_bytes();
            if !(nb.starts_with(b"user.") || nb == b"security.capability") {
                continue;
            }
            if let Some(v) = f.get_xattr(&n).map_err(|e| read_err(path, e))? {
                pax_record(&mut data, &[b"SCHILY.xattr.", nb].concat(), &v);
            }
        }
        if !data.is_empty() {
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::XHeader);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_path("PaxHeader").map_err(ExportError::Write)?;
            h.set_cksum();
            self.tar.append(&h, &data[..]).map_err(ExportError::Write)?;
        }
        Ok(())
    }

    fn emit(&mut self, n: &Node) -> Result<(), ExportError> {
        let path = os(n.path);
        let st = n.st;
        match fmt_of(st) {
            SFlag::S_IFDIR => {
                let mut h = Self::header(st, EntryType::Directory);
                let mut p = n.path.to_vec();
                p.push(b'/');
                self.tar
                    .append_data(&mut h, os(&p), io::empty())
                    .map_err(ExportError::Write)
            }
            SFlag::S_IFREG => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&key) {
                        let mut h = Self::header(st, EntryType::Link);
                        let first = first.clone();
                        return self
                            .tar
                            .append_link(&mut h, path, os(&first))
                            .map_err(ExportError::Write);
                    }
                    self.links.insert(key, n.path.to_vec());
                }
                let fd = nix::fcntl::openat(
                    n.dir,
                    os(n.name),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| read_err(n.path, e))?;
                let f = File::from(fd);
                self.write_xattrs(&f, n.path)?;
                let mut h = Self::header(st, EntryType::Regular);
                h.set_size(st.st_size as u64);
                // Bound the read by the size in the header: a file growing meanwhile must not
                // corrupt the stream (a shrinking one fails the write, which is right).
                self.tar
                    .append_data(&mut h, path, std::io::Read::take(f, st.st_size as u64))
                    .map_err(ExportError::Write)
            }
            SFlag::S_IFLNK => {
                let target =
                    nix::fcntl::readlinkat(n.dir, os(n.name)).map_err(|e| read_err(n.path, e))?;
                let mut h = Self::header(st, EntryType::Symlink);
                self.tar
                    .append_link(&mut h, path, &target)
                    .map_err(ExportError::Write)
            }
            kind @ (SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO) => {
                let t = match kind {
                    SFlag::S_IFCHR => EntryType::Char,
                    SFlag::S_IFBLK => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                let mut h = Self::header(st, t);
                h.set_device_major(nix::sys::stat::major(st.st_rdev) as u32)
                    .map_err(ExportError::Write)?;
                h.set_device_minor(nix::sys::stat::minor(st.st_rdev) as u32)
                    .map_err(ExportError::Write)?;
                self.tar
                    .append_data(&mut h, path, io::empty())
                    .map_err(ExportError::Write)
            }
            // Sockets have no tar form.
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<W, ExportError> {
        self.tar.into_inner().map_err(ExportError::Write)
    }
}

fn open_root(dir: &Path) -> Result<OwnedFd, ExportError> {
    nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| read_err(dir.as_os_str().as_bytes(), e))
}

/// Write the tree below `dir` (not `dir` itself) as a tar stream to `out`; returns `out`.
pub fn export_dir<W: Write>(dir: &Path, out: W) -> Result<W, ExportError> {
    let root = open_root(dir)?;
    let mut w = Writer::new(out);
    walk(&root, b"", &mut |n| {
        w.emit(n)?;
        Ok(Action::Emit)
    })?;
    w.finish()
}

fn is_whiteout(st: &FileStat) -> bool {
    fmt_of(st) == SFlag::S_IFCHR && st.st_rdev == 0
}

fn is_opaque(n: &Node) -> bool {
    let Ok(fd) = nix::fcntl::openat(
        n.dir,
        os(n.name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    matches!(
        File::from(fd).get_xattr("trusted.overlay.opaque"),
        Ok(Some(v)) if v == b"y"
    )
}

/// Proper ancestors of `path`, nearest last.
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(move |(i, _)| &path[..i])
}

/// Write image `name`'s merged root file system as a tar stream to `out`; returns `out`.
pub fn export_image<W: Write>(store: &Store, name: &str, out: W) -> Result<W, ExportError> {
    let rec = store.get(name)?;
    let mut layers = store.layer_paths(&rec);
    layers.reverse();
    export_layers(&layers, out)
}

/// Write the merge of overlayfs-style layer directories (`layers` topmost first: a container's
/// writable upper directory, then its image's layers) as a tar stream to `out`.
pub fn export_layers<W: Write>(layers: &[std::path::PathBuf], out: W) -> Result<W, ExportError> {
    let mut w = Writer::new(out);
    // Paths written, with whether each was a directory.
    let mut written: HashMap<Vec<u8>, bool> = HashMap::new();
    // Names hidden from lower layers (with their subtrees) and directories whose lower
    // contents are hidden, accumulated from the layers above the current one.
    let mut hidden: HashSet<Vec<u8>> = HashSet::new();
    let mut opaque: HashSet<Vec<u8>> = HashSet::new();
    for layer in layers {
        let root = open_root(layer)?;
        let mut new_hidden = Vec::new();
        let mut new_opaque = Vec::new();
        walk(&root, b"", &mut |n| {
            if hidden.contains(n.path)
                || ancestors(n.path).any(|a| hidden.contains(a) || opaque.contains(a))
            {
                return Ok(Action::Skip);
            }
            let is_dir = fmt_of(n.st) == SFlag::S_IFDIR;
            if is_whiteout(n.st) {
                new_hidden.push(n.path.to_vec());
                return Ok(Action::Skip);
            }
            if is_dir && is_opaque(n) {
                new_opaque.push(n.path.to_vec());
            }
            match written.get(n.path) {
                Some(true) if is_dir => return Ok(Action::Descend),
                Some(_) => return Ok(Action::Skip),
                None => {}
            }
            w.emit(n)?;
            written.insert(n.path.to_vec(), is_dir);
            if !is_dir {
                new_hidden.push(n.path.to_vec());
            }
            Ok(Action::Emit)
        })?;
        hidden.extend(new_hidden);
        opaque.extend(new_opaque);
    }
    w.finish()
}
