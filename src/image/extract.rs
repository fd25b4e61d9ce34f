//! Applying one layer (an uncompressed tar stream) into a fresh, empty directory, in the form an
//! overlayfs lower directory needs.
//!
//! Layers come from registries and archives nobody vetted, so the stream is hostile until proven
//! otherwise. The rules:
//!
//! - **Paths.** Every entry path is split into components by us; empty and `.` components are
//!   dropped; an absolute path or any `..` component refuses the whole layer (InvalidInput).
//!   GNU tar would strip a leading `/` instead, but no image builder writes one, so a layer that
//!   does is more likely an attack than a mistake. Parents are resolved with
//!   `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against the layer's root descriptor and
//!   created one component at a time with `mkdirat`; the final component is always created or
//!   removed relative to its parent's descriptor with `*at` calls that never follow it. A
//!   symlink in the layer can therefore redirect an entry only to somewhere else inside the
//!   layer, never out of it (CVE-2018-15664 and the `docker cp` family).
//! - **Symlinks** are stored verbatim and never followed while extracting.
//! - **Hard links** must name a regular file already extracted from this layer, resolved the
//!   same way (absolute and `..` targets are refused); anything else refuses the layer.
//! - **Whiteouts** `.wh.NAME` become a 0:0 character device `NAME`; `.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on its directory (the overlayfs format, see
//!   Documentation/filesystems/overlayfs.rst). A whiteout whose parent goes through a symlink,
//!   or that names `.` or `..`, refuses the layer. Other `.wh..wh.` names (aufs bookkeeping) are
//!   ignored.
//! - **Duplicates**: a later entry replaces an earlier one, removing it first (a whole tree if
//!   it was a directory), except that a directory over a directory keeps the contents and takes
//!   the new metadata, as docker does.
//! - **The root**: a `.` directory entry sets the root's metadata; any other type for `.`
//!   refuses the layer.
//! - **Devices and FIFOs** in the stream are skipped and counted ([`LayerStats::skipped_devices`]):
//!   a container's `/dev` is a fresh tmpfs, and device nodes in an image are a way to reach host
//!   hardware. Sockets never appear in tar.
//! - **Ownership and modes** are applied as recorded (numeric IDs; user and group names are
//!   ignored), including setuid and setgid bits: the store is 0700 root, so they only matter
//!   inside a container, where the image author meant them.
//! - **Extended attributes** from PAX `SCHILY.xattr.*` records: `user.*` and
//!   `security.capability` are kept; everything else is dropped, above all `trusted.*`, which
//!   would let a layer forge overlayfs metadata (`trusted.overlay.redirect`, `.metacopy`).
//!   Attributes are not set on symlinks.
//! - **Limits** ([`Limits`]): bytes are counted on the decompressed stream as it is read,
//!   padding and skipped data included, and entries are counted, so a compression bomb or
//!   endless padding ends with InvalidInput after bounded work. Long names and PAX headers are
//!   read into memory only up to a small cap. Nothing else is buffered.
//! - **Truncation**: the stream must reach the end-of-archive block; ending anywhere else is
//!   InvalidInput.
//! - **Not supported** (InvalidInput): GNU sparse files, and PAX `size` records that disagree
//!   with the header (Go writes them only for files over 8 GiB).
//!
//! The tar framing is parsed here (headers via [`tar::Header`]) rather than by
//! `tar::Archive`, which reads long names and PAX headers of any size into memory and ends
//! silently on a truncated stream.

use std::ffi::OsStr;
use std::fs::{File, FileTimes};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use tar::EntryType;
use xattr::FileExt;

use super::ErrorKind;
use super::digest::{Digest, Hasher};

mod stream;

pub(crate) use stream::*;

const BLOCK: usize = 512;
/// The largest PAX extended header we read; real ones are a few hundred bytes, xattrs included.
const MAX_PAX_LEN: u64 = 1 << 20;
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// Bounds on what one layer may make us do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes read from the stream, headers and padding included.
    pub max_bytes: u64,
    /// Tar headers, extension headers included.
    pub max_entries: u64,
    /// Bytes in one entry path or link target.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 10_000_000,
            max_path_len: 4096,
        }
    }
}

/// What applying a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// sha256 of the uncompressed stream as read, to compare with the config's `diff_ids`.
    pub diff_id: Digest,
    /// Length of the uncompressed stream in bytes.
    pub size: u64,
    /// File system entries in the layer (extension headers not counted).
    pub entries: u64,
    /// Device nodes and FIFOs that were skipped by policy.
    pub skipped_devices: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("layer entry {path:?} refused: {reason}")]
    Refused { path: String, reason: String },
    #[error("layer is not a valid tar stream: {0}")]
    Malformed(String),
    #[error("layer is truncated: {0}")]
    Truncated(&'static str),
    #[error("layer exceeds the limit of {0}")]
    Limit(String),
    #[error("cannot open extraction directory {path}: {source}")]
    Root { path: String, source: Errno },
    #[error("extracting {path:?}: {source}")]
    Io { path: String, source: io::Error },
    #[error("reading layer: {0}")]
    Read(io::Error),
}

impl ExtractError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExtractError::Refused { .. }
            | ExtractError::Malformed(_)
            | ExtractError::Truncated(_)
            | ExtractError::Limit(_) => ErrorKind::InvalidInput,
            ExtractError::Root { .. } | ExtractError::Io { .. } | ExtractError::Read(_) => {
                ErrorKind::Failed
            }
        }
    }
}

fn refused(path: &[u8], reason: impl Into<String>) -> ExtractError {
    ExtractError::Refused {
        path: String::from_utf8_lossy(path).into_owned(),
        reason: reason.into(),
    }
}

fn io_at(path: &[u8], source: impl Into<io::Error>) -> ExtractError {
    ExtractError::Io {
        path: String::from_utf8_lossy(path).into_owned(),
        source: source.into(),
    }
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    if comps.is_empty() {
        return b".".to_vec();
    }
    comps.join(&b'/')
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn how(flags: OFlag, no_symlinks: bool) -> OpenHow {
    let mut resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    if no_symlinks {
        resolve |= ResolveFlag::RESOLVE_NO_SYMLINKS;
    }
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve)
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY
}

/// Open the directory `comps` below `root`, creating missing components (0755, root-owned)
/// one at a time. Every lookup goes through `openat2` confined to `root`; `mkdirat` only ever
/// gets a single component relative to an already resolved directory.
fn ensure_dir(
    root: &OwnedFd,
    comps: &[&[u8]],
    no_symlinks: bool,
    whole: &[u8],
) -> Result<OwnedFd, ExtractError> {
    let map = |e: Errno| match e {
        Errno::ENOTDIR => refused(whole, "a parent is not a directory"),
        Errno::ELOOP if no_symlinks => refused(whole, "a parent is a symlink"),
        Errno::ELOOP => refused(whole, "too many symlinks in a parent"),
        Errno::EXDEV => refused(whole, "a parent leaves the layer"),
        e => io_at(whole, e),
    };
    match nix::fcntl::openat2(root, os(&join(comps)), how(dir_flags(), no_symlinks)) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(map(e)),
    }
    let mut cur = root.try_clone().map_err(|e| io_at(whole, e))?;
    for i in 0..comps.len() {
        let prefix = join(&comps[..=i]);
        cur = match nix::fcntl::openat2(root, os(&prefix), how(dir_flags(), no_symlinks)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(&cur, os(comps[i]), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(map(e)),
                }
                nix::fcntl::openat2(root, os(&prefix), how(dir_flags(), no_symlinks)).map_err(
                    |e| match e {
                        // A dangling symlink sits where the directory would go.
                        Errno::ENOENT => refused(whole, "a parent is a dangling symlink"),
                        e => map(e),
                    },
                )?
            }
            Err(e) => return Err(map(e)),
        };
    }
    Ok(cur)
}

fn lstat_at(dir: &OwnedFd, name: &[u8]) -> Result<Option<FileStat>, Errno> {
    match nix::sys::stat::fstatat(dir, os(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

fn is_reg(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Remove `name` in `dir` whatever it is, a directory with everything below it included,
/// never following a symlink.
pub(crate) fn remove_at(dir: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if !is_dir(&st) {
        return nix::unistd::unlinkat(dir, os(name), UnlinkatFlags::NoRemoveDir);
    }
    let sub = nix::fcntl::openat(
        dir,
        os(name),
        dir_flags() | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let names: Vec<Vec<u8>> = {
        let mut d = nix::dir::Dir::from_fd(sub.try_clone().map_err(|_| Errno::EMFILE)?)?;
        d.iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect()
    };
    for n in names {
        remove_at(&sub, &n)?;
    }
    nix::unistd::unlinkat(dir, os(name), UnlinkatFlags::RemoveDir)
}

fn id(v: u64, path: &[u8]) -> Result<u32, ExtractError> {
    u32::try_from(v).map_err(|_| refused(path, "owner ID out of range"))
}

fn keep_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

/// Ownership, then mode (chown clears setuid bits), then capabilities (chown clears those
/// too), then the times.
fn apply_meta(f: &File, e: &Entry, set_time: bool) -> Result<(), ExtractError> {
    let p = &e.path;
    nix::unistd::fchown(
        f.as_fd(),
        Some(Uid::from_raw(id(e.uid, p)?)),
        Some(Gid::from_raw(id(e.gid, p)?)),
    )
    .map_err(|er| io_at(p, er))?;
    f.set_permissions(std::fs::Permissions::from_mode(e.mode & 0o7777))
        .map_err(|er| io_at(p, er))?;
    for (k, v) in &e.xattrs {
        if keep_xattr(k) {
            f.set_xattr(os(k), v).map_err(|er| io_at(p, er))?;
        }
    }
    if set_time {
        f.set_times(mtime(e.mtime)).map_err(|er| io_at(p, er))?;
    }
    Ok(())
}

fn mtime(secs: u64) -> FileTimes {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    FileTimes::new().set_modified(t).set_accessed(t)
}

/// Apply the tar stream `reader` into `dest`, an empty directory. See the module docs for the
/// rules. On error `dest` holds a partial layer; the caller discards it.
pub fn apply_layer(
    reader: impl Read,
    dest: &Path,
    limits: &Limits,
) -> Result<LayerStats, ExtractError> {
    let root = nix::fcntl::open(
        dest,
        dir_flags() | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| ExtractError::Root {
        path: dest.display().to_string(),
        source,
    })?;
    let mut s = Stream::new(reader, limits);
    let mut headers = 0;
    let mut entries = 0;
    let mut skipped_devices = 0;
    // Directory mtimes are set at the end: creating children would change them again.
    let mut dir_times: Vec<(Vec<u8>, u64)> = Vec::new();

    while let Some(e) = next_entry(&mut s, limits, &mut headers)? {
        entries += 1;
        apply_entry(&root, &mut s, e, &mut dir_times, &mut skipped_devices)?;
    }
    // Whatever follows the end-of-archive block is part of the diff_id (it is part of the
    // stream the digest was taken over) and counts against the limit.
    let mut buf = vec![0u8; 64 * 1024];
    while s.read_some(&mut buf)? > 0 {}

    for (path, t) in &dir_times {
        // The directory may have been replaced by a later entry; then its time is moot.
        let Ok(fd) = nix::fcntl::openat2(&root, os(path), how(dir_flags(), true)) else {
            continue;
        };
        File::from(fd)
            .set_times(mtime(*t))
            .map_err(|er| io_at(path, er))?;
    }
    Ok(LayerStats {
        diff_id: s.hasher.finish(),
        size: s.read,
        entries,
        skipped_devices,
    })
}

fn apply_entry<R: Read>(
    root: &OwnedFd,
    s: &mut Stream<R>,
    mut e: Entry,
    dir_times: &mut Vec<(Vec<u8>, u64)>,
    skipped_devices: &mut u64,
) -> Result<(), ExtractError> {
    let raw = e.path.clone();
    let mut comps = components(&raw)?;
    // Old (v7) tar marks directories only with a trailing slash.
    if matches!(e.kind, EntryType::Regular) && raw.ends_with(b"/") {
        e.kind = EntryType::Directory;
    }

    let Some(name) = comps.pop() else {
        // The layer root itself.
        if !e.kind.is_dir() {
            return Err(refused(&raw, "the layer root must stay a directory"));
        }
        let f = File::from(root.try_clone().map_err(|er| io_at(&raw, er))?);
        apply_meta(&f, &e, false)?;
        dir_times.push((b".".to_vec(), e.mtime));
        return s.skip_data(e.size, &raw);
    };

    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        // A whiteout must not be steered through a symlink: it would hide or mark a directory
        // other than the one the layer names.
        let parent = ensure_dir(root, &comps, true, &raw)?;
        s.skip_data(e.size, &raw)?;
        if name == OPAQUE_MARKER {
            File::from(parent)
                .set_xattr("trusted.overlay.opaque", b"y")
                .map_err(|er| io_at(&raw, er))?;
        } else if name.starts_with(WHITEOUT_META_PREFIX) {
            // aufs bookkeeping (.wh..wh.plnk and friends); meaningless for overlayfs.
        } else {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(refused(&raw, "whiteout of '.' or '..'"));
            }
            remove_at(&parent, target).map_err(|er| io_at(&raw, er))?;
            nix::sys::stat::mknodat(
                &parent,
                os(target),
                SFlag::S_IFCHR,
                Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|er| io_at(&raw, er))?;
        }
        return Ok(());
    }

    let parent = ensure_dir(root, &comps, false, &raw)?;
    let existing = lstat_at(&parent, name).map_err(|er| io_at(&raw, er))?;
    let replace = |keep_dir: bool| -> Result<(), ExtractError> {
        match &existing {
            Some(st) if keep_dir && is_dir(st) => Ok(()),
            Some(_) => remove_at(&parent, name).map_err(|er| io_at(&raw, er)),
            None => Ok(()),
        }
    };

    match e.kind {
        EntryType::Directory => {
            replace(true)?;
            match nix::sys::stat::mkdirat(&parent, os(name), Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(er) => return Err(io_at(&raw, er)),
            }
            let fd = nix::fcntl::openat(
                &parent,
                os(name),
                dir_flags() | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|er| io_at(&raw, er))?;
            apply_meta(&File::from(fd), &e, false)?;
            let mut full = comps.clone();
            full.push(name);
            dir_times.push((join(&full), e.mtime));
            s.skip_data(e.size, &raw)
        }
        EntryType::Regular | EntryType::Continuous => {
            replace(false)?;
            let fd = nix::fcntl::openat(
                &parent,
                os(name),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|er| io_at(&raw, er))?;
            let mut f = File::from(fd);
            s.copy_data(e.size, &mut f, &raw)?;
            apply_meta(&f, &e, true)
        }
        EntryType::Symlink => {
            let target = e
                .link
                .take()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| refused(&raw, "symlink without a target"))?;
            replace(false)?;
            nix::unistd::symlinkat(os(&target), &parent, os(name)).map_err(|er| io_at(&raw, er))?;
            nix::unistd::fchownat(
                &parent,
                os(name),
                Some(Uid::from_raw(id(e.uid, &raw)?)),
                Some(Gid::from_raw(id(e.gid, &raw)?)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|er| io_at(&raw, er))?;
            let t = nix::sys::time::TimeSpec::new(e.mtime as i64, 0);
            nix::sys::stat::utimensat(
                &parent,
                os(name),
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|er| io_at(&raw, er))?;
            s.skip_data(e.size, &raw)
        }
        EntryType::Link => {
            let target = e
                .link
                .take()
                .ok_or_else(|| refused(&raw, "hard link without a target"))?;
            let mut tcomps = components(&target).map_err(|_| {
                refused(&raw, "hard link target is absolute or has a '..' component")
            })?;
            let tname = tcomps
                .pop()
                .ok_or_else(|| refused(&raw, "hard link to the layer root"))?;
            let tparent =
                match nix::fcntl::openat2(root, os(&join(&tcomps)), how(dir_flags(), false)) {
                    Ok(fd) => fd,
                    Err(_) => return Err(refused(&raw, "hard link target is not in this layer")),
                };
            match lstat_at(&tparent, tname) {
                Ok(Some(st)) if is_reg(&st) => {}
                _ => {
                    return Err(refused(
                        &raw,
                        "hard link target is not a regular file extracted from this layer",
                    ));
                }
            }
            let tst = lstat_at(&tparent, tname).ok().flatten();
            if let (Some(a), Some(b)) = (&existing, &tst)
                && a.st_ino == b.st_ino
                && a.st_dev == b.st_dev
            {
                // Linking a file to itself (or a second link entry for the same pair).
                return s.skip_data(e.size, &raw);
            }
            replace(false)?;
            nix::unistd::linkat(&tparent, os(tname), &parent, os(name), AtFlags::empty())
                .map_err(|er| io_at(&raw, er))?;
            s.skip_data(e.size, &raw)
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            *skipped_devices += 1;
            s.skip_data(e.size, &raw)
        }
        EntryType::GNUSparse => Err(refused(&raw, "sparse files are not supported")),
        other => Err(refused(
            &raw,
            format!("unsupported entry type {:?}", other.as_byte() as char),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testtar::RawTar;
    use std::collections::BTreeSet;
    use std::io::Cursor;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    /// A scratch directory with a canary file and a canary directory beside the extraction
    /// root; hostile layers must leave both, and everything else outside the root, untouched.
    struct Scene {
        _tmp: tempfile::TempDir,
        base: PathBuf,
        root: PathBuf,
    }

    const CANARY: &[u8] = b"canary content";

    impl Scene {
        fn new() -> Scene {
            let tmp = tempfile::tempdir().unwrap();
            let base = tmp.path().to_path_buf();
            fs_write(&base.join("canary"), CANARY);
            std::fs::create_dir(base.join("canarydir")).unwrap();
            fs_write(&base.join("canarydir/x"), CANARY);
            std::fs::create_dir(base.join("root")).unwrap();
            Scene {
                root: base.join("root"),
                base,
                _tmp: tmp,
            }
        }

        fn apply(&self, tar: &[u8]) -> Result<LayerStats, ExtractError> {
            apply_layer(Cursor::new(tar.to_vec()), &self.root, &Limits::default())
        }

        /// Everything outside the root is as it was.
        fn check_outside(&self) {
            assert_eq!(std::fs::read(self.base.join("canary")).unwrap(), CANARY);
            assert_eq!(
                std::fs::read(self.base.join("canarydir/x")).unwrap(),
                CANARY
            );
            let names = |p: &Path| -> BTreeSet<String> {
                std::fs::read_dir(p)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            };
            assert_eq!(
                names(&self.base),
                ["canary", "canarydir", "root"].map(String::from).into()
            );
            assert_eq!(
                names(&self.base.join("canarydir")),
                ["x".to_string()].into()
            );
        }

        fn refuse(&self, tar: &[u8]) -> ExtractError {
            let e = self.apply(tar).expect_err("hostile layer accepted");
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            self.check_outside();
            e
        }
    }

    fn fs_write(p: &Path, d: &[u8]) {
        std::fs::write(p, d).unwrap();
    }

    fn lmeta(p: &Path) -> std::fs::Metadata {
        std::fs::symlink_metadata(p).unwrap()
    }

    #[test]
    fn extracts_files_dirs_links_and_metadata() {
        let s = Scene::new();
        let mut t = RawTar::new();
        t.dir("./")
            .dir("etc/")
            .file("etc/hosts", b"127.0.0.1 localhost\n");
        t.symlink("etc/link", "/etc/hosts")
            .hardlink("etc/hard", "etc/hosts");
        t.with_header(b"bin/su", b"#!", |h| {
            h.set_mode(0o4755);
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mtime(1_234_567_890);
        });
        t.pax(&[
            ("SCHILY.xattr.user.note", b"hi"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/x"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
            ("uid", b"70000"),
        ]);
        t.file("bin/ping", b"ping");
        let long = format!("deep/{}/file", "d".repeat(150));
        t.file(&long, b"long gnu name");
        t.pax(&[("path", format!("pax/{}", "p".repeat(200)).as_bytes())]);
        t.file("ignored-name", b"long pax name");
        let tar = t.finish();

        let st = s.apply(&tar).unwrap();
        assert_eq!(st.diff_id, Digest::of(&tar));
        assert_eq!(st.size, tar.len() as u64);
        assert_eq!(st.entries, 9);
        let r = &s.root;
        assert_eq!(
            std::fs::read(r.join("etc/hosts")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        assert_eq!(
            std::fs::read_link(r.join("etc/link")).unwrap(),
            Path::new("/etc/hosts")
        );
        assert_eq!(
            lmeta(&r.join("etc/hard")).ino(),
            lmeta(&r.join("etc/hosts")).ino()
        );
        let su = lmeta(&r.join("bin/su"));
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(
            (su.uid(), su.gid(), su.mtime()),
            (1000, 1001, 1_234_567_890)
        );
        let ping = File::open(r.join("bin/ping")).unwrap();
        assert_eq!(ping.get_xattr("user.note").unwrap().unwrap(), b"hi");
        assert!(ping.get_xattr("security.capability").unwrap().is_some());
        assert_eq!(ping.get_xattr("trusted.overlay.redirect").unwrap(), None);
        assert_eq!(ping.metadata().unwrap().uid(), 70000);
        assert_eq!(std::fs::read(r.join(&long)).unwrap(), b"long gnu name");
        let pax_path = r.join(format!("pax/{}", "p".repeat(200)));
        assert_eq!(std::fs::read(pax_path).unwrap(), b"long pax name");
        assert_eq!(
            lmeta(&r.join("etc")).mtime(),
            1_600_000_000,
            "dir mtime set last"
        );
        s.check_outside();
    }

    #[test]
    fn whiteouts_become_overlay_form() {
        let s = Scene::new();
        let mut t = RawTar::new();
        t.file("a/.wh.gone", b"").file("a/kept", b"k");
        t.file("opq/.wh..wh..opq", b"").file(".wh..wh.plnk", b"");
        t.file("b/old", b"x").file("b/.wh.old", b"");
        let st = s.apply(&t.finish()).unwrap();
        assert_eq!(st.entries, 6);
        let wh = lmeta(&s.root.join("a/gone"));
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &wh.file_type()
        ));
        assert_eq!(wh.rdev(), 0);
        let b_old = lmeta(&s.root.join("b/old"));
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &b_old.file_type()
        ));
        let opq = File::open(s.root.join("opq")).unwrap();
        assert_eq!(
            opq.get_xattr("trusted.overlay.opaque").unwrap().unwrap(),
            b"y"
        );
        assert!(!s.root.join(".wh..wh.plnk").exists());
        assert!(!s.root.join("opq/.wh..wh..opq").exists());
    }

    #[test]
    fn refuses_parent_and_absolute_paths_in_every_header_form() {
        for path in ["../canary", "a/../../canary", "/canary", "./../canary"] {
            let long = format!("{}/{path}", "x".repeat(120));
            let long = if path.starts_with('/') {
                format!("/{}{path}", "x".repeat(120))
            } else {
                long
            };
            // ustar name, GNU long name, PAX path.
            let s = Scene::new();
            let mut t = RawTar::new();
            t.file(path, b"evil");
            s.refuse(&t.finish());

            let s = Scene::new();
            let mut t = RawTar::new();
            t.file(&long, b"evil");
            s.refuse(&t.finish());

            let s = Scene::new();
            let mut t = RawTar::new();
            t.pax(&[("path", path.as_bytes())]);
            t.file("innocent", b"evil");
            s.refuse(&t.finish());
            assert!(!s.root.join("innocent").exists());
        }
    }

    #[test]
    fn symlinks_never_lead_out() {
        // An absolute link to a directory that exists outside: resolved inside the root, where
        // it does not exist.
        let s = Scene::new();
        let abs = s.base.join("canarydir");
        let mut t = RawTar::new();
        t.symlink("a", abs.to_str().unwrap()).file("a/x", b"evil");
        s.refuse(&t.finish());

        // Relative links that climb: clamped at the root, so the file lands inside.
        let s = Scene::new();
        let mut t = RawTar::new();
        t.symlink("b", "../../../../canarydir")
            .dir("canarydir")
            .file("b/x", b"inside");
        s.apply(&t.finish()).unwrap();
        assert_eq!(
            std::fs::read(s.root.join("canarydir/x")).unwrap(),
            b"inside"
        );
        s.check_outside();

        // A file entry named like an existing symlink replaces the link, never writes through.
        let s = Scene::new();
        let mut t = RawTar::new();
        t.symlink("c", s.base.join("canary").to_str().unwrap())
            .file("c", b"evil");
        s.apply(&t.finish()).unwrap();
        assert_eq!(std::fs::read(s.root.join("c")).unwrap(), b"evil");
        assert!(lmeta(&s.root.join("c")).is_file());
        s.check_outside();
    }

    #[test]
    fn hard_links_stay_inside_and_name_files() {
        let outside = ["../../canary", "../canary", "/etc/passwd"];
        for target in outside {
            let s = Scene::new();
            let mut t = RawTar::new();
            t.hardlink("h", target);
            s.refuse(&t.finish());
        }
        // To a symlink pointing outside, to a directory, to something not (yet) extracted.
        let s = Scene::new();
        let canary = s.base.join("canary");
        let mut t = RawTar::new();
        t.symlink("l", canary.to_str().unwrap()).hardlink("h", "l");
        s.refuse(&t.finish());
        assert!(!s.root.join("h").exists());

        let s = Scene::new();
        let mut t = RawTar::new();
        t.dir("d").hardlink("h", "d");
        s.refuse(&t.finish());

        let s = Scene::new();
        let mut t = RawTar::new();
        t.hardlink("h", "later").file("later", b"");
        s.refuse(&t.finish());

        // Through a symlinked parent that points outside: resolved in the root, not found.
        let s = Scene::new();
        let mut t = RawTar::new();
        t.symlink("p", s.base.to_str().unwrap())
            .hardlink("h", "p/canary");
        s.refuse(&t.finish());
    }

    #[test]
    fn whiteouts_must_not_escape_or_follow_links() {
        for path in [".wh..", "a/.wh..", "../.wh.canary", "a/../../.wh.canary"] {
            let s = Scene::new();
            let mut t = RawTar::new();
            t.dir("a").file(path, b"");
            s.refuse(&t.finish());
        }
        let s = Scene::new();
        let mut t = RawTar::new();
        t.symlink("l", s.base.to_str().unwrap())
            .file("l/.wh.canary", b"");
        s.refuse(&t.finish());
        let s = Scene::new();
        let mut t = RawTar::new();
        t.dir("d").symlink("l", "d").file("l/.wh..wh..opq", b"");
        s.refuse(&t.finish());
        let d = File::open(s.root.join("d")).unwrap();
        assert_eq!(d.get_xattr("trusted.overlay.opaque").unwrap(), None);
    }

    #[test]
    fn the_root_stays_a_directory() {
        for path in [".", "./", ""] {
            let s = Scene::new();
            let mut t = RawTar::new();
            t.symlink(path, s.base.to_str().unwrap()).file("x", b"evil");
            s.refuse(&t.finish());
        }
        // ("./" as a regular file is a v7-style directory entry, so not in this list.)
        for path in [".", ""] {
            let s = Scene::new();
            let mut t = RawTar::new();
            t.file(path, b"x");
            s.refuse(&t.finish());
        }
        // A '.' directory entry is fine and sets the root's metadata.
        let s = Scene::new();
        let mut t = RawTar::new();
        t.with_header(b"./", b"", |h| {
            h.set_entry_type(EntryType::Directory);
            h.set_mode(0o750);
        });
        s.apply(&t.finish()).unwrap();
        assert_eq!(lmeta(&s.root).mode() & 0o7777, 0o750);
    }

    #[test]
    fn devices_are_skipped_and_counted() {
        let s = Scene::new();
        let mut t = RawTar::new();
        for (name, kind) in [
            ("dev/sda", EntryType::Block),
            ("dev/mem", EntryType::Char),
            ("dev/null", EntryType::Char),
            ("run/fifo", EntryType::Fifo),
        ] {
            t.with_header(name.as_bytes(), b"", |h| {
                h.set_entry_type(kind);
                h.set_device_major(1).unwrap();
                h.set_device_minor(1).unwrap();
            });
        }
        t.file("dev/keep", b"");
        let st = s.apply(&t.finish()).unwrap();
        assert_eq!(st.skipped_devices, 4);
        assert!(!s.root.join("dev/mem").exists());
        assert!(!s.root.join("run/fifo").exists());
        assert!(s.root.join("dev/keep").exists());
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let s = Scene::new();
        let mut t = RawTar::new();
        t.file("a", b"file").dir("a");
        t.dir("b").file("b/child", b"c").symlink("b", "/elsewhere");
        t.dir("c").file("c/child", b"c").dir("c");
        t.dir("d").file("d/child", b"c").file("d", b"now a file");
        t.file("e", b"one").file("e", b"two");
        s.apply(&t.finish()).unwrap();
        let r = &s.root;
        assert!(lmeta(&r.join("a")).is_dir());
        assert!(lmeta(&r.join("b")).file_type().is_symlink());
        assert_eq!(std::fs::read(r.join("c/child")).unwrap(), b"c");
        assert_eq!(std::fs::read(r.join("d")).unwrap(), b"now a file");
        assert_eq!(std::fs::read(r.join("e")).unwrap(), b"two");
        s.check_outside();
    }

    #[test]
    fn truncated_streams_are_refused() {
        let mut t = RawTar::new();
        t.file("a", &[7u8; 3000]).file("b", b"bee");
        let full = t.finish();
        let body = t.bytes.clone();
        // Mid-header, mid-data, mid-padding, at a header boundary without end blocks, empty.
        for cut in [100, 512 + 1000, 512 + 3000, body.len(), 0] {
            let s = Scene::new();
            let e = s.refuse(&full[..cut]);
            assert!(matches!(e, ExtractError::Truncated(_)), "cut {cut}: {e}");
        }
        // One end block is enough (some writers emit only one), and so is a stream ending on it.
        let s = Scene::new();
        s.apply(&full[..body.len() + 512]).unwrap();
    }

    #[test]
    fn compression_bomb_ends_quickly() {
        use std::time::Instant;
        // 10 GiB of zeros in one file, gzip-compressed on the fly; the encoder only runs as
        // far as the decoder pulls.
        let mut h = tar::Header::new_gnu();
        h.set_path("bomb").unwrap();
        h.set_size(10 << 30);
        h.set_mode(0o644);
        h.set_cksum();
        let stream = Cursor::new(h.as_bytes().to_vec()).chain(io::repeat(0).take(10 << 30));
        let gz = flate2::read::GzEncoder::new(stream, flate2::Compression::fast());
        let reader = crate::image::compress::decompress(gz).unwrap();
        let s = Scene::new();
        let limits = Limits {
            max_bytes: 8 << 20,
            ..Limits::default()
        };
        let start = Instant::now();
        let e = apply_layer(reader, &s.root, &limits).unwrap_err();
        assert!(matches!(e, ExtractError::Limit(_)), "{e}");
        assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
        s.check_outside();
    }

    #[test]
    fn endless_padding_and_entries_hit_limits() {
        let mut t = RawTar::new();
        t.file("a", b"a");
        let stream = Cursor::new(t.finish()).chain(io::repeat(0).take(1 << 40));
        let s = Scene::new();
        let limits = Limits {
            max_bytes: 4 << 20,
            ..Limits::default()
        };
        let e = apply_layer(stream, &s.root, &limits).unwrap_err();
        assert!(matches!(e, ExtractError::Limit(_)), "{e}");

        let mut t = RawTar::new();
        for i in 0..20 {
            t.file(&format!("f{i}"), b"");
        }
        let s = Scene::new();
        let limits = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        let e = apply_layer(Cursor::new(t.finish()), &s.root, &limits).unwrap_err();
        assert!(matches!(e, ExtractError::Limit(_)), "{e}");

        // A long-name header larger than any path is refused before it is read.
        let mut t = RawTar::new();
        t.file(&"n".repeat(8000), b"");
        let s = Scene::new();
        let e = s.refuse(&t.finish());
        assert!(matches!(e, ExtractError::Limit(_)), "{e}");
    }

    #[test]
    fn bad_checksums_and_sparse_files_are_refused() {
        let mut t = RawTar::new();
        t.file("a", b"a");
        let mut bad = t.finish();
        bad[0] ^= 1;
        Scene::new().refuse(&bad);
        let mut t = RawTar::new();
        t.raw(EntryType::GNUSparse, b"sparse", b"", 0o644, b"");
        Scene::new().refuse(&t.finish());
    }
}
