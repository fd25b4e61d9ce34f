//! The sending side of a copy: a file or tree walked through fds below its handle, sent as a stream
//! of records (metadata, data chunks, links).

use super::*;

pub(super) struct Sender<W: Write> {
    pub(super) out: BufWriter<W>,
    pub(super) limits: Limits,
    pub(super) stats: CopyStats,
    pub(super) buf: Vec<u8>,
}

impl<W: Write> Sender<W> {
    pub(super) fn w(&mut self, b: &[u8]) -> Result<(), CopyError> {
        self.out.write_all(b).map_err(CopyError::Stream)
    }

    pub(super) fn meta(&mut self, tag: u8, m: &Meta) -> Result<(), CopyError> {
        let mut h = Vec::with_capacity(32 + m.name.len());
        h.push(tag);
        h.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
        h.extend_from_slice(&m.name);
        h.extend_from_slice(&m.mode.to_le_bytes());
        h.extend_from_slice(&m.uid.to_le_bytes());
        h.extend_from_slice(&m.gid.to_le_bytes());
        h.extend_from_slice(&m.mtime_sec.to_le_bytes());
        h.extend_from_slice(&m.mtime_nsec.to_le_bytes());
        self.w(&h)
    }

    pub(super) fn count_entry(&mut self) -> Result<(), CopyError> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(CopyError::LimitExceeded(format!(
                "{} entries",
                self.limits.max_entries
            )));
        }
        Ok(())
    }

    /// Send the entry behind `handle` (an `O_PATH | O_NOFOLLOW` descriptor) as `name`.
    /// `path` is for messages; `top` is the copied item itself, where what cannot be copied
    /// is an error rather than skipped.
    pub(super) fn entry(
        &mut self,
        handle: OwnedFd,
        name: &[u8],
        path: &[u8],
        depth: usize,
        top: bool,
    ) -> Result<(), CopyError> {
        let st = nix::sys::stat::fstat(&handle).map_err(|e| CopyError::io("stat", path, e))?;
        let k = kind(&st);
        let skip_or_refuse = |s: &mut Self, reason: &str| {
            if top {
                Err(CopyError::refused(path, reason))
            } else {
                s.stats.skipped += 1;
                Ok(())
            }
        };
        if k == SFlag::S_IFDIR || top {
            match on_kernel_fs(handle.as_fd()) {
                Ok(false) => {}
                Ok(true) => return skip_or_refuse(self, "is on a kernel file system"),
                Err(e) => return Err(CopyError::io("statfs", path, e)),
            }
        }
        match k {
            SFlag::S_IFREG => {
                self.count_entry()?;
                self.file(&handle, &st, name, path)
            }
            SFlag::S_IFLNK => {
                self.count_entry()?;
                let target = nix::fcntl::readlinkat(&handle, "")
                    .map_err(|e| CopyError::io("readlink", path, e))?;
                let target = target.as_bytes();
                if target.len() >= MAX_PATH {
                    return Err(CopyError::refused(path, "symlink target too long"));
                }
                self.meta(LINK, &Meta::of(name, &st))?;
                self.w(&(target.len() as u16).to_le_bytes())?;
                self.w(target)
            }
            SFlag::S_IFDIR => {
                if depth > self.limits.max_depth {
                    return Err(CopyError::LimitExceeded(format!(
                        "{} nested directories",
                        self.limits.max_depth
                    )));
                }
                self.count_entry()?;
                self.meta(DIR, &Meta::of(name, &st))?;
                // Opening "." of an O_PATH directory handle gives a readable descriptor of
                // the same directory, without a lookup by name.
                let dir = nix::fcntl::openat(
                    &handle,
                    ".",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| CopyError::io("open", path, e))?;
                let lookups = dir.try_clone().map_err(|e| CopyError::io("dup", path, e))?;
                let mut listing =
                    nix::dir::Dir::from_fd(dir).map_err(|e| CopyError::io("read", path, e))?;
                for child in listing.iter() {
                    let child = child.map_err(|e| CopyError::io("read", path, e))?;
                    let cname = child.file_name().to_bytes();
                    if cname == b"." || cname == b".." {
                        continue;
                    }
                    let cpath = [path, b"/", cname].concat();
                    let h = match nix::fcntl::openat(
                        &lookups,
                        cname,
                        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    ) {
                        Ok(h) => h,
                        // Removed while we copy: it is simply not part of the copy.
                        Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(CopyError::io("open", &cpath, e)),
                    };
                    self.entry(h, cname, &cpath, depth + 1, false)?;
                }
                self.w(&[UP])
            }
            SFlag::S_IFIFO => skip_or_refuse(self, "is a FIFO"),
            SFlag::S_IFSOCK => skip_or_refuse(self, "is a socket"),
            SFlag::S_IFCHR | SFlag::S_IFBLK => skip_or_refuse(self, "is a device"),
            _ => skip_or_refuse(self, "is of an unknown type"),
        }
    }

    pub(super) fn file(
        &mut self,
        handle: &OwnedFd,
        st: &FileStat,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), CopyError> {
        let fd = reopen_for_reading(handle.as_fd()).map_err(|e| CopyError::io("open", path, e))?;
        let now = nix::sys::stat::fstat(&fd).map_err(|e| CopyError::io("stat", path, e))?;
        if kind(&now) != SFlag::S_IFREG || (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
            return Err(CopyError::refused(path, "changed during the copy"));
        }
        let size = now.st_size.max(0) as u64;
        if size > self.limits.max_file_size {
            return Err(CopyError::LimitExceeded(format!(
                "{} bytes in one file",
                self.limits.max_file_size
            )));
        }
        self.meta(FILE, &Meta::of(name, &now))?;
        self.w(&size.to_le_bytes())?;
        let mut off = 0u64;
        while off < size {
            // The next range of data; a file system without SEEK_DATA has one range, all of
            // it.
            let start = match nix::unistd::lseek(&fd, off as i64, Whence::SeekData) {
                Ok(s) => s as u64,
                Err(Errno::ENXIO) => break,
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => off,
                Err(e) => return Err(CopyError::io("seek", path, e)),
            };
            if start >= size {
                break;
            }
            let end = match nix::unistd::lseek(&fd, start as i64, Whence::SeekHole) {
                Ok(h) => (h as u64).min(size),
                Err(_) => size,
            };
            let len = end - start;
            self.stats.bytes += len;
            if self.stats.bytes > self.limits.max_bytes {
                return Err(CopyError::LimitExceeded(format!(
                    "{} bytes",
                    self.limits.max_bytes
                )));
            }
            self.w(&start.to_le_bytes())?;
            self.w(&len.to_le_bytes())?;
            let mut at = start;
            while at < end {
                let want = ((end - at) as usize).min(CHUNK);
                let mut buf = std::mem::take(&mut self.buf);
                buf.resize(CHUNK, 0);
                let n = match nix::sys::uio::pread(&fd, &mut buf[..want], at as i64) {
                    Ok(0) => {
                        return Err(CopyError::refused(path, "shrank during the copy"));
                    }
                    Ok(n) => n,
                    Err(Errno::EINTR) => {
                        self.buf = buf;
                        continue;
                    }
                    Err(e) => return Err(CopyError::io("read", path, e)),
                };
                let r = self.w(&buf[..n]);
                self.buf = buf;
                r?;
                at += n as u64;
            }
            off = end;
        }
        self.w(&0u64.to_le_bytes())?;
        self.w(&0u64.to_le_bytes())
    }
}

/// Write `item` (a file, a symlink, or a directory with everything in it) to `out` as a copy
/// stream.
pub fn send<W: Write>(item: Item, out: W, limits: &Limits) -> Result<CopyStats, CopyError> {
    let mut s = Sender {
        out: BufWriter::with_capacity(CHUNK, out),
        limits: *limits,
        stats: CopyStats::default(),
        buf: Vec::new(),
    };
    s.w(MAGIC)?;
    let path = item.path.clone();
    s.entry(item.fd, &item.name, path.as_bytes(), 0, true)?;
    s.w(&[END])?;
    let (entries, skipped) = (s.stats.entries, s.stats.skipped);
    s.w(&entries.to_le_bytes())?;
    s.w(&skipped.to_le_bytes())?;
    s.out.flush().map_err(CopyError::Stream)?;
    Ok(s.stats)
}
