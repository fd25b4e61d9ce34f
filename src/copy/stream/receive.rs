//! The receiving side of a copy: records written below a directory handle through fds only, each
//! file under a temporary name until complete, bounded by the limits.

use super::*;

/// How [`receive`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveOptions {
    pub limits: Limits,
    pub ownership: Ownership,
    /// Clear setuid and setgid bits (copying out of a container onto the host).
    pub strip_setid: bool,
}

/// A temporary name in a directory, removed on drop unless it was renamed into place.
pub(super) struct TempName<'a> {
    pub(super) dir: BorrowedFd<'a>,
    pub(super) name: Vec<u8>,
    pub(super) armed: bool,
}

impl Drop for TempName<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Nothing else to do on failure: the copy already failed, and this name is ours.
            let _cleanup = nix::unistd::unlinkat(
                self.dir,
                self.name.as_slice(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

pub(super) static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) fn temp_name() -> Vec<u8> {
    format!(
        ".berth-cp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes()
}

pub(super) struct Receiver<R: Read> {
    pub(super) input: BufReader<R>,
    pub(super) opts: ReceiveOptions,
    pub(super) stats: CopyStats,
    pub(super) buf: Vec<u8>,
}

pub(super) fn malformed(what: impl Into<String>) -> CopyError {
    CopyError::Malformed(what.into())
}

impl<R: Read> Receiver<R> {
    pub(super) fn read_exact(&mut self, b: &mut [u8]) -> Result<(), CopyError> {
        self.input.read_exact(b).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                malformed("it ends early")
            } else {
                CopyError::Stream(e)
            }
        })
    }

    pub(super) fn u8(&mut self) -> Result<u8, CopyError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, CopyError> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub(super) fn u32(&mut self) -> Result<u32, CopyError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(super) fn u64(&mut self) -> Result<u64, CopyError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub(super) fn bytes(&mut self, len: usize) -> Result<Vec<u8>, CopyError> {
        let mut v = vec![0u8; len];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    pub(super) fn meta(&mut self) -> Result<Meta, CopyError> {
        let len = self.u16()? as usize;
        if len > MAX_NAME {
            return Err(malformed("a name is longer than 255 bytes"));
        }
        let name = self.bytes(len)?;
        Ok(Meta {
            name,
            mode: self.u32()? & 0o7777,
            uid: self.u32()?,
            gid: self.u32()?,
            mtime_sec: self.u64()? as i64,
            mtime_nsec: self.u32()?.min(999_999_999),
        })
    }

    pub(super) fn count_entry(&mut self) -> Result<(), CopyError> {
        self.stats.entries += 1;
        if self.stats.entries > self.opts.limits.max_entries {
            return Err(CopyError::LimitExceeded(format!(
                "{} entries",
                self.opts.limits.max_entries
            )));
        }
        Ok(())
    }

    /// The host owner of an entry, or `None` to leave it to whoever writes.
    pub(super) fn owner(&self, m: &Meta) -> Result<Option<(u32, u32)>, CopyError> {
        let unmapped = || CopyError::refused(&m.name, "its owner is outside the container's IDs");
        match self.opts.ownership {
            Ownership::Caller => Ok(None),
            Ownership::Fixed { uid, gid, map } => Ok(Some((
                map.to_host(uid).ok_or_else(unmapped)?,
                map.to_host(gid).ok_or_else(unmapped)?,
            ))),
            Ownership::Preserve(map) => Ok(Some((
                map.to_host(m.uid).ok_or_else(unmapped)?,
                map.to_host(m.gid).ok_or_else(unmapped)?,
            ))),
        }
    }

    pub(super) fn mode(&self, m: &Meta) -> Mode {
        let mut mode = m.mode;
        if self.opts.strip_setid {
            mode &= !0o6000;
        }
        Mode::from_bits_truncate(mode)
    }

    /// Owner first (chown clears setuid bits), then mode, then times.
    pub(super) fn apply_meta(&self, fd: BorrowedFd<'_>, m: &Meta) -> Result<(), CopyError> {
        if let Some((uid, gid)) = self.owner(m)? {
            nix::unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| CopyError::io("chown", &m.name, e))?;
        }
        nix::sys::stat::fchmod(fd, self.mode(m)).map_err(|e| CopyError::io("chmod", &m.name, e))?;
        let t = TimeSpec::new(m.mtime_sec, m.mtime_nsec as i64);
        nix::sys::stat::futimens(fd, &t, &t).map_err(|e| CopyError::io("set times of", &m.name, e))
    }

    /// Move a finished temporary entry over `name` (replacing a file or symlink there, never
    /// a directory).
    pub(super) fn commit(
        &self,
        dir: BorrowedFd<'_>,
        mut tmp: TempName<'_>,
        name: &[u8],
    ) -> Result<(), CopyError> {
        match nix::fcntl::renameat(dir, tmp.name.as_slice(), dir, name) {
            Ok(()) => {
                tmp.armed = false;
                Ok(())
            }
            Err(Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST) => Err(CopyError::refused(
                name,
                "cannot overwrite a directory with a non-directory",
            )),
            Err(e) => Err(CopyError::io("rename", name, e)),
        }
    }

    pub(super) fn create_temp<'d>(
        &self,
        dir: BorrowedFd<'d>,
        name: &[u8],
    ) -> Result<(TempName<'d>, OwnedFd), CopyError> {
        for _ in 0..100 {
            let tmp = temp_name();
            match nix::fcntl::openat(
                dir,
                tmp.as_slice(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NOCTTY
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => {
                    return Ok((
                        TempName {
                            dir,
                            name: tmp,
                            armed: true,
                        },
                        fd,
                    ));
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(CopyError::io("create", name, e)),
            }
        }
        Err(CopyError::io("create", name, Errno::EEXIST))
    }

    pub(super) fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        m: &Meta,
        name: &[u8],
    ) -> Result<(), CopyError> {
        let size = self.u64()?;
        if size > self.opts.limits.max_file_size {
            return Err(CopyError::LimitExceeded(format!(
                "{} bytes in one file",
                self.opts.limits.max_file_size
            )));
        }
        let (tmp, fd) = self.create_temp(dir, name)?;
        let mut prev_end = 0u64;
        loop {
            let off = self.u64()?;
            let len = self.u64()?;
            if len == 0 {
                break;
            }
            let end = off
                .checked_add(len)
                .filter(|e| off >= prev_end && *e <= size)
                .ok_or_else(|| {
                    malformed("a file's data ranges are out of order or past its size")
                })?;
            self.stats.bytes += len;
            if self.stats.bytes > self.opts.limits.max_bytes {
                return Err(CopyError::LimitExceeded(format!(
                    "{} bytes",
                    self.opts.limits.max_bytes
                )));
            }
            let mut at = off;
            let mut buf = std::mem::take(&mut self.buf);
            buf.resize(CHUNK, 0);
            while at < end {
                let n = ((end - at) as usize).min(CHUNK);
                self.read_exact(&mut buf[..n])?;
                let mut done = 0;
                while done < n {
                    match nix::sys::uio::pwrite(&fd, &buf[done..n], (at + done as u64) as i64) {
                        Ok(w) => done += w,
                        Err(Errno::EINTR) => {}
                        Err(e) => return Err(CopyError::io("write", name, e)),
                    }
                }
                at += n as u64;
            }
            self.buf = buf;
            prev_end = end;
        }
        nix::unistd::ftruncate(&fd, size as i64).map_err(|e| CopyError::io("truncate", name, e))?;
        self.apply_meta(fd.as_fd(), m)?;
        drop(fd);
        self.commit(dir, tmp, name)
    }

    pub(super) fn symlink(
        &mut self,
        dir: BorrowedFd<'_>,
        m: &Meta,
        name: &[u8],
    ) -> Result<(), CopyError> {
        let len = self.u16()? as usize;
        if len == 0 || len >= MAX_PATH {
            return Err(malformed("a symlink target is empty or too long"));
        }
        let target = self.bytes(len)?;
        if target.contains(&0) {
            return Err(malformed("a symlink target contains NUL"));
        }
        let mut made = None;
        for _ in 0..100 {
            let tmp = temp_name();
            match nix::unistd::symlinkat(target.as_slice(), dir, tmp.as_slice()) {
                Ok(()) => {
                    made = Some(tmp);
                    break;
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(CopyError::io("create symlink", name, e)),
            }
        }
        let tmp = TempName {
            dir,
            name: made.ok_or_else(|| CopyError::io("create symlink", name, Errno::EEXIST))?,
            armed: true,
        };
        if let Some((uid, gid)) = self.owner(m)? {
            // Change the symlink we made, through a handle proved to be a symlink: never
            // whatever may have been renamed onto our temporary name.
            let h = nix::fcntl::openat(
                dir,
                tmp.name.as_slice(),
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| CopyError::io("open", name, e))?;
            let st = nix::sys::stat::fstat(&h).map_err(|e| CopyError::io("stat", name, e))?;
            if kind(&st) != SFlag::S_IFLNK {
                return Err(CopyError::refused(name, "changed during the copy"));
            }
            nix::unistd::fchownat(
                &h,
                "",
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| CopyError::io("chown", name, e))?;
        }
        self.commit(dir, tmp, name)
    }

    /// Open (or make) directory `name` in `dir`; `Some(true)` if we made it.
    pub(super) fn enter(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> Result<(OwnedFd, bool), CopyError> {
        let open = || {
            nix::fcntl::openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        let not_dir =
            || CopyError::refused(name, "cannot overwrite a non-directory with a directory");
        let (fd, made) = match open() {
            Ok(fd) => (fd, false),
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(CopyError::io("create directory", name, e)),
                }
                // Swapped for a symlink or a file since mkdirat: refused by O_NOFOLLOW and
                // O_DIRECTORY.
                (
                    open().map_err(|e| match e {
                        Errno::ELOOP | Errno::ENOTDIR => not_dir(),
                        e => CopyError::io("open", name, e),
                    })?,
                    true,
                )
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(not_dir()),
            Err(e) => return Err(CopyError::io("open", name, e)),
        };
        if !made && on_kernel_fs(fd.as_fd()).map_err(|e| CopyError::io("statfs", name, e))? {
            return Err(CopyError::refused(name, "is on a kernel file system"));
        }
        Ok((fd, made))
    }
}

/// Apply a copy stream from `input`. `dest` is asked, once the first entry shows whether a
/// directory comes, where it goes. Returns what was written; the stream's count of skipped
/// entries is in [`CopyStats::skipped`].
pub fn receive<R: Read>(
    input: R,
    dest: impl FnOnce(bool) -> Result<Dest, CopyError>,
    opts: &ReceiveOptions,
) -> Result<CopyStats, CopyError> {
    let mut r = Receiver {
        input: BufReader::with_capacity(CHUNK, input),
        opts: *opts,
        stats: CopyStats::default(),
        buf: Vec::new(),
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(malformed("it does not start with BERTHCP1"));
    }
    let tag = r.u8()?;
    if ![DIR, FILE, LINK].contains(&tag) {
        return Err(malformed("it has no entry"));
    }
    let top = r.meta()?;
    let dest = dest(tag == DIR)?;
    let (base, top_name) = match &dest {
        Dest::Into(d) => (d.as_fd(), top.name.clone()),
        Dest::As { parent, name } => (parent.as_fd(), name.clone()),
    };
    if !name_ok(&top_name) {
        return Err(CopyError::refused(
            &top_name,
            "is not a name a copy can create",
        ));
    }
    if on_kernel_fs(base).map_err(|e| CopyError::io("statfs", &top_name, e))? {
        return Err(CopyError::refused(&top_name, "is on a kernel file system"));
    }
    r.count_entry()?;
    match tag {
        FILE => r.file(base, &top, &top_name)?,
        LINK => r.symlink(base, &top, &top_name)?,
        _ => {
            // The directories being filled, innermost last, with the metadata to give the
            // ones we made once their contents are in.
            let (fd, made) = r.enter(base, &top_name)?;
            let mut stack: Vec<(OwnedFd, Option<Meta>)> = vec![(fd, made.then_some(top))];
            while !stack.is_empty() {
                let tag = r.u8()?;
                if tag == UP {
                    let (fd, meta) = stack.pop().expect("not empty");
                    if let Some(m) = meta {
                        r.apply_meta(fd.as_fd(), &m)?;
                    }
                    continue;
                }
                if ![DIR, FILE, LINK].contains(&tag) {
                    return Err(malformed(format!("unexpected record {tag:#x}")));
                }
                let m = r.meta()?;
                if !name_ok(&m.name) {
                    return Err(CopyError::refused(
                        &m.name,
                        "is not a name a copy can create",
                    ));
                }
                r.count_entry()?;
                let dir = stack.last().expect("not empty").0.as_fd();
                match tag {
                    FILE => r.file(dir, &m, &m.name)?,
                    LINK => r.symlink(dir, &m, &m.name)?,
                    _ => {
                        if stack.len() > r.opts.limits.max_depth {
                            return Err(CopyError::LimitExceeded(format!(
                                "{} nested directories",
                                r.opts.limits.max_depth
                            )));
                        }
                        let (fd, made) = r.enter(dir, &m.name)?;
                        stack.push((fd, made.then_some(m)));
                    }
                }
            }
        }
    }
    if r.u8()? != END {
        return Err(malformed("it does not end after its entry"));
    }
    let entries = r.u64()?;
    r.stats.skipped = r.u64()?;
    if entries != r.stats.entries {
        return Err(malformed(format!(
            "it announces {entries} entries but carried {}",
            r.stats.entries
        )));
    }
    Ok(r.stats)
}
