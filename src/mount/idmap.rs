//! Idmapped image layers: the container's root filesystem without chowning anything.
//!
//! Image layers on disk stay owned by the IDs the image says (0:0, 1000:1000, …) and are shared
//! by every container. For one container each read-only layer directory is cloned as a detached
//! mount and idmapped through the container's user namespace, so that through the clone an
//! on-disk 0 is the container's host root (e.g. 200000) and 1000 is 201000. overlayfs is then
//! mounted over those clones with a plain (non-idmapped) upper directory owned by the
//! container's mapped root, so what the container writes lands on disk with its mapped IDs.
//!
//! The sequence, all done by root in the initial user namespace (mount_setattr(2),
//! open_tree(2), fsconfig(2), Documentation/filesystems/overlayfs.rst):
//! 1. `open_tree(path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)` for each lower layer: a private,
//!    detached copy of the mount, rooted at the layer directory.
//! 2. `mount_setattr(fd, "", AT_EMPTY_PATH, {MOUNT_ATTR_IDMAP | RDONLY | NOSUID | NODEV,
//!    userns_fd})` on each clone. The user namespace must already have its maps.
//! 3. `fsopen("overlay")`, then `fsconfig(FSCONFIG_SET_FD, "lowerdir+", clone)` per layer (top
//!    first), `"upperdir"`/`"workdir"` as descriptors too, extra string options (`context=`),
//!    `FSCONFIG_CMD_CREATE`, and `fsmount` → a detached overlay mount. Layers handed over as
//!    descriptors (Linux 6.13; detached mounts 6.15) need no path strings, so the one-page
//!    `lowerdir=` option limit (~45 long layer paths) does not apply; overlayfs's own limit is
//!    500 layers.
//! 4. `move_mount` of the overlay onto the container's root mountpoint, either in a private
//!    mount namespace of the (initial-namespace) helper that is later copied into the
//!    container's user namespace, or — simpler — by the container-side process itself, already
//!    in the container's user namespace and its own mount namespace: a detached mount made by
//!    initial-namespace root may be attached there by container root (the pattern of
//!    systemd-mountfsd). Never in the host's mount namespace.
//!
//! Why root in the initial user namespace, and not container root: layers carry whiteouts and
//! `trusted.overlay.opaque` markers (written by the image extractor), and `trusted.*` xattrs are
//! only visible to `CAP_SYS_ADMIN` in the initial user namespace. An overlay mounted inside the
//! container's user namespace cannot read them and silently shows the contents of opaque
//! directories' lower layers (the tests below show it). So the overlay's superblock is always
//! created (step 3) by initial-namespace root; only the attaching (step 4) may happen on the
//! container's side. An overlay attached before the mount namespace is copied into the
//! container's user namespace becomes a locked mount there, which the container cannot
//! unmount.
//!
//! The clones' descriptors can be dropped once the overlay exists: overlayfs holds private
//! references to its layers.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use crate::sys::mount_api::{self, MountAttrFlags};

/// Attributes of each idmapped lower-layer clone. nosuid/nodev here only guard the clones;
/// what the container may do is decided by the overlay mount's own attributes.
pub const LOWER_ATTRS: MountAttrFlags = MountAttrFlags::RDONLY
    .union(MountAttrFlags::NOSUID)
    .union(MountAttrFlags::NODEV);

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("opening layer {path}: {errno}")]
    Open { path: PathBuf, errno: Errno },
    #[error("cloning the mount at {path} (open_tree): {errno}")]
    Clone { path: PathBuf, errno: Errno },
    #[error(
        "idmapping the mount of {path} (mount_setattr MOUNT_ATTR_IDMAP): {errno}; the filesystem must support idmapped mounts and the user namespace must have its maps written"
    )]
    SetIdmap { path: PathBuf, errno: Errno },
    #[error("overlay option {key:?}: value {value:?} contains a NUL byte or a comma")]
    BadOption { key: String, value: String },
    #[error("overlay {step}: {errno}{}", fmt_log(.log))]
    Overlay {
        step: String,
        errno: Errno,
        /// What overlayfs logged in the filesystem context (its reason, usually).
        log: Vec<String>,
    },
    #[error("attaching the mount at {target}: {errno}")]
    Attach { target: PathBuf, errno: Errno },
}

fn fmt_log(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" ({})", log.join("; "))
    }
}

type Result<T, E = IdmapError> = std::result::Result<T, E>;

/// Open a directory for use as a layer, upper or work directory: `O_PATH | O_DIRECTORY |
/// O_NOFOLLOW | O_CLOEXEC`, so a symlink put in its place is refused.
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| IdmapError::Open {
        path: path.to_owned(),
        errno,
    })
}

/// A detached, read-only clone of the directory `path` whose IDs are translated through
/// `userns`'s ID map: an on-disk ID `n` appears as whatever `userns` maps `n` to. The original
/// directory and its mount are unchanged; the clone disappears when the descriptor (and every
/// overlay built on it) is gone.
pub fn idmapped_clone(path: &Path, userns: BorrowedFd<'_>) -> Result<OwnedFd> {
    let fd = mount_api::open_tree_clone(None, path, false).map_err(|errno| IdmapError::Clone {
        path: path.to_owned(),
        errno,
    })?;
    mount_api::mount_setattr_idmap(fd.as_fd(), false, userns, LOWER_ATTRS).map_err(|errno| {
        IdmapError::SetIdmap {
            path: path.to_owned(),
            errno,
        }
    })?;
    Ok(fd)
}

/// The writable part of an overlay: both directories on the same filesystem, `work` empty.
pub struct UpperDirs<'a> {
    pub upper: BorrowedFd<'a>,
    pub work: BorrowedFd<'a>,
}

/// What to build an overlay from.
pub struct Overlay<'a> {
    /// Lower layers, top-most first (the order of `lowerdir=`): idmapped clones from
    /// [`idmapped_clone`] or any open directory.
    pub lowers: &'a [BorrowedFd<'a>],
    /// None for a read-only overlay of the lowers alone.
    pub upper: Option<UpperDirs<'a>>,
    /// Shown as the mount's source in mountinfo.
    pub source: &'a str,
    /// Further string options, e.g. `("context", "system_u:object_r:container_file_t:s0:c1,c2")`
    /// for SELinux (a value may contain commas: options are passed one by one, not as a
    /// comma-joined string).
    pub options: &'a [(&'a str, &'a str)],
    /// Attributes of the overlay mount itself (what the container sees): e.g. NODEV.
    pub attrs: MountAttrFlags,
}

fn cstring(key: &str, value: &str) -> Result<(CString, CString)> {
    let bad = || IdmapError::BadOption {
        key: key.to_owned(),
        value: value.to_owned(),
    };
    Ok((
        CString::new(key).map_err(|_| bad())?,
        CString::new(value).map_err(|_| bad())?,
    ))
}

/// Create the overlay with the new mount API (steps 3 of the module docs) and return it as a
/// detached mount, to be attached with [`attach`]. Errors carry overlayfs's own message.
pub fn mount_overlay(spec: &Overlay<'_>) -> Result<OwnedFd> {
    let fs = mount_api::fsopen(c"overlay").map_err(|errno| IdmapError::Overlay {
        step: "fsopen".into(),
        errno,
        log: Vec::new(),
    })?;
    let fail = |step: String| {
        let fs = fs.as_fd();
        move |errno| IdmapError::Overlay {
            step,
            errno,
            log: mount_api::fs_context_log(fs),
        }
    };
    let (k, v) = cstring("source", spec.source)?;
    mount_api::fsconfig_set_string(fs.as_fd(), &k, &v).map_err(fail("source".into()))?;
    for (i, lower) in spec.lowers.iter().enumerate() {
        mount_api::fsconfig_set_fd(fs.as_fd(), c"lowerdir+", *lower)
            .map_err(fail(format!("lowerdir+ (layer {i})")))?;
    }
    if let Some(up) = &spec.upper {
        mount_api::fsconfig_set_fd(fs.as_fd(), c"upperdir", up.upper)
            .map_err(fail("upperdir".into()))?;
        mount_api::fsconfig_set_fd(fs.as_fd(), c"workdir", up.work)
            .map_err(fail("workdir".into()))?;
    }
    for (key, value) in spec.options {
        if value.contains(',') && *key != "context" && !key.ends_with("context") {
            // Only SELinux context options legitimately hold commas (MCS categories).
            return Err(IdmapError::BadOption {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            });
        }
        let (k, v) = cstring(key, value)?;
        mount_api::fsconfig_set_string(fs.as_fd(), &k, &v).map_err(fail(format!("{key}=")))?;
    }
    mount_api::fsconfig_create(fs.as_fd()).map_err(fail("create".into()))?;
    mount_api::fsmount(fs.as_fd(), spec.attrs).map_err(fail("fsmount".into()))
}

/// Attach a detached mount (an overlay from [`mount_overlay`], an idmapped clone) at `target`
/// in the caller's mount namespace.
pub fn attach(mount: BorrowedFd<'_>, target: &Path) -> Result<()> {
    mount_api::move_mount_to(mount, None, target).map_err(|errno| IdmapError::Attach {
        target: target.to_owned(),
        errno,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::userns::{IdMaps, IdRange, UsernsHolder};
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;

    const HOST_ROOT: u32 = 200_000;

    fn container_maps() -> IdMaps {
        IdRange {
            host_start: HOST_ROOT,
            count: 65536,
        }
        .id_maps()
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "idmapped-mount tests must run as root (CI does)"
        );
    }

    /// Run `f` on a new thread that has its own mount namespace with every mount private, so
    /// nothing it mounts reaches the host's mount table; the namespace goes away with the
    /// thread. unshare(CLONE_NEWNS) affects only the calling thread (it implies CLONE_FS, which
    /// a thread may unshare on its own), which is what makes this safe in the multi-threaded
    /// test binary, with no code running after fork.
    fn in_private_mount_ns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                    .expect("unshare(CLONE_NEWNS)");
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .expect("making / private in the test's mount namespace");
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn chown(path: &Path, id: u32) {
        std::os::unix::fs::lchown(path, Some(id), Some(id)).unwrap();
    }

    fn mkfile(path: &Path, content: &str, id: u32, mode: u32) {
        fs::write(path, content).unwrap();
        chown(path, id);
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mkdir(path: &Path, id: u32) {
        fs::create_dir(path).unwrap();
        chown(path, id);
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// (uid, gid, mode & 0o7777, content) of a file, as the caller sees it.
    fn probe(path: &Path) -> (u32, u32, u32, String) {
        let m = fs::symlink_metadata(path).unwrap();
        let content = if m.is_file() {
            fs::read_to_string(path).unwrap()
        } else {
            String::new()
        };
        (m.uid(), m.gid(), m.mode() & 0o7777, content)
    }

    /// Run a shell script as root of the container user namespace, in the caller's mount
    /// namespace (or a copy owned by the user namespace).
    fn as_container_root(userns: &UsernsHolder, new_mount_ns: bool, script: &str) -> String {
        as_container_root_attaching(userns, new_mount_ns, None, script)
    }

    fn as_container_root_attaching(
        userns: &UsernsHolder,
        new_mount_ns: bool,
        attach: Option<(OwnedFd, &Path)>,
        script: &str,
    ) -> String {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-ec", script]);
        crate::sys::userns::command_join_userns_as_root(
            &mut cmd,
            crate::sys::userns::JoinAsRoot {
                userns: userns.userns_fd().unwrap(),
                new_mount_ns,
                attach: attach
                    .map(|(fd, path)| (fd, CString::new(path.as_os_str().as_bytes()).unwrap())),
            },
        );
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    struct Layout {
        _tmp: tempfile::TempDir,
        base: PathBuf,
    }

    impl Layout {
        fn new() -> Layout {
            let tmp = tempfile::tempdir().unwrap();
            // Reachable by the container's mapped IDs, which are "others" here.
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
            let base = tmp.path().to_owned();
            Layout { _tmp: tmp, base }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.base.join(rel)
        }
    }

    /// The image lower layer of the task: 0:0 and 1000:1000 files, a setuid file, a directory.
    fn make_lower(l: &Layout) {
        mkdir(&l.p("lower"), 0);
        mkfile(&l.p("lower/root-file"), "root\n", 0, 0o644);
        mkfile(&l.p("lower/user-file"), "user\n", 1000, 0o640);
        mkfile(&l.p("lower/suid"), "#!/bin/true\n", 1000, 0o4755);
        mkdir(&l.p("lower/etc"), 0);
        mkfile(
            &l.p("lower/etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
            0,
            0o644,
        );
    }

    fn make_upper(l: &Layout, upper: &str, work: &str) {
        mkdir(&l.p(upper), HOST_ROOT);
        mkdir(&l.p(work), 0);
    }

    #[test]
    fn idmapped_lower_with_plain_upper_via_fsconfig_fds() {
        require_root();
        let l = Layout::new();
        make_lower(&l);
        make_upper(&l, "upper", "work");
        mkdir(&l.p("merged"), 0);
        let before: Vec<_> = ["root-file", "user-file", "suid", "etc", "etc/passwd"]
            .iter()
            .map(|f| probe(&l.p("lower").join(f)))
            .collect();
        let userns = UsernsHolder::new(&container_maps()).unwrap();
        let userns_fd = userns.userns_fd().unwrap();

        in_private_mount_ns(|| {
            let lower = idmapped_clone(&l.p("lower"), userns_fd.as_fd()).unwrap();
            let (upper, work) = (
                open_dir(&l.p("upper")).unwrap(),
                open_dir(&l.p("work")).unwrap(),
            );
            let ovl = mount_overlay(&Overlay {
                lowers: &[lower.as_fd()],
                upper: Some(UpperDirs {
                    upper: upper.as_fd(),
                    work: work.as_fd(),
                }),
                source: "berth-test",
                options: &[],
                attrs: MountAttrFlags::NODEV,
            })
            .unwrap();
            // overlayfs holds its own references to the layers.
            drop(lower);
            attach(ovl.as_fd(), &l.p("merged")).unwrap();
            let m = |f: &str| probe(&l.p("merged").join(f));

            // From the initial namespace: on-disk 0 → 200000, 1000 → 201000, setuid kept.
            assert_eq!(m("root-file"), (200_000, 200_000, 0o644, "root\n".into()));
            assert_eq!(m("user-file"), (201_000, 201_000, 0o640, "user\n".into()));
            assert_eq!(m("suid").0, 201_000);
            assert_eq!(m("suid").2, 0o4755);
            assert_eq!(m("").0, HOST_ROOT, "the overlay's root is the upper dir's");

            // From the container: the image's own IDs; it writes as its root.
            let out = as_container_root(
                &userns,
                false,
                &format!(
                    "cd {m}; stat -c '%u:%g %a %n' root-file user-file suid etc; id -u; \
                     touch created; mkdir made; echo 'x:x:1:1::/:/bin/sh' >> etc/passwd; \
                     chown 1000:1000 made; chmod u-s suid",
                    m = l.p("merged").display()
                ),
            );
            assert_eq!(
                out,
                "0:0 644 root-file\n1000:1000 640 user-file\n1000:1000 4755 suid\n\
                 0:0 755 etc\n0\n"
            );

            // A process with fsuid 200000 in the initial namespace, through the overlay.
            let old_uid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(HOST_ROOT));
            let old_gid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(HOST_ROOT));
            let made = fs::write(l.p("merged/by-fsuid"), "fsuid\n");
            nix::unistd::setfsuid(old_uid);
            nix::unistd::setfsgid(old_gid);
            made.unwrap();

            // The mount is in this thread's namespace only.
            let mine = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
            assert!(mine.contains(" - overlay berth-test "), "{mine}");
        });

        // Outside the private namespace nothing is mounted: merged is an empty directory.
        assert_eq!(fs::read_dir(l.p("merged")).unwrap().count(), 0);
        let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!host.contains(" - overlay berth-test "));

        // On disk the upper layer holds the container's writes with its mapped host IDs.
        let u = |f: &str| probe(&l.p("upper").join(f));
        assert_eq!(u("created").0, HOST_ROOT);
        assert_eq!(u("created").1, HOST_ROOT);
        assert_eq!(u("made").0, 201_000, "chown 1000 inside = 201000 on disk");
        assert_eq!(u("by-fsuid").0, HOST_ROOT);
        assert_eq!(
            u("etc").0,
            HOST_ROOT,
            "copied-up directory keeps its mapped owner"
        );
        assert_eq!(u("etc/passwd").0, HOST_ROOT);
        assert!(u("etc/passwd").3.ends_with("x:x:1:1::/:/bin/sh\n"));
        assert_eq!((u("suid").0, u("suid").2), (201_000, 0o755));

        // And the lower layer is exactly as it was: owners, modes, contents.
        let after: Vec<_> = ["root-file", "user-file", "suid", "etc", "etc/passwd"]
            .iter()
            .map(|f| probe(&l.p("lower").join(f)))
            .collect();
        assert_eq!(before, after);
        assert_eq!(after[2], (1000, 1000, 0o4755, "#!/bin/true\n".into()));
    }

    /// Upper layer on tmpfs (a private tmpfs mounted in the test's namespace), lowers on the
    /// disk's filesystem; the container's view from its own mount namespace.
    #[test]
    fn idmapped_lower_with_upper_on_tmpfs() {
        require_root();
        let l = Layout::new();
        make_lower(&l);
        mkdir(&l.p("rw"), 0);
        mkdir(&l.p("merged"), 0);
        let userns = UsernsHolder::new(&container_maps()).unwrap();
        let userns_fd = userns.userns_fd().unwrap();
        in_private_mount_ns(|| {
            nix::mount::mount(
                Some("tmpfs"),
                &l.p("rw"),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("mode=0755,size=16m"),
            )
            .unwrap();
            make_upper(&l, "rw/upper", "rw/work");
            let lower = idmapped_clone(&l.p("lower"), userns_fd.as_fd()).unwrap();
            let (upper, work) = (
                open_dir(&l.p("rw/upper")).unwrap(),
                open_dir(&l.p("rw/work")).unwrap(),
            );
            let ovl = mount_overlay(&Overlay {
                lowers: &[lower.as_fd()],
                upper: Some(UpperDirs {
                    upper: upper.as_fd(),
                    work: work.as_fd(),
                }),
                source: "berth-test",
                options: &[],
                attrs: MountAttrFlags::empty(),
            })
            .unwrap();
            attach(ovl.as_fd(), &l.p("merged")).unwrap();
            assert_eq!(probe(&l.p("merged/user-file")).0, 201_000);
            // As the container will be: in a copy of the mount namespace owned by its user
            // namespace, where the overlay is a locked mount it cannot take away.
            let out = as_container_root(
                &userns,
                true,
                &format!(
                    "echo hi > {m}/etc/new; umount {m} 2>/dev/null || echo refused; \
                     grep -c ' - overlay berth-test ' /proc/self/mountinfo",
                    m = l.p("merged").display()
                ),
            );
            assert_eq!(out, "refused\n1\n", "umount fails and the overlay stays");
            assert_eq!(probe(&l.p("rw/upper/etc/new")).0, HOST_ROOT);
            assert_eq!(probe(&l.p("rw/upper/etc")).0, HOST_ROOT);
        });
        assert_eq!(probe(&l.p("lower/etc")).0, 0);
        assert!(!l.p("lower/etc/new").exists());
    }

    /// The hand-over berth-helper can use: the overlay is made (detached) by root in the
    /// initial user namespace, and a process already in the container's user namespace and its
    /// own mount namespace attaches it there. The mount then exists only in the container's
    /// mount namespace.
    #[test]
    fn detached_overlay_attached_by_container_root() {
        require_root();
        let l = Layout::new();
        make_lower(&l);
        make_upper(&l, "upper", "work");
        mkdir(&l.p("merged"), 0);
        let userns = UsernsHolder::new(&container_maps()).unwrap();
        let userns_fd = userns.userns_fd().unwrap();
        in_private_mount_ns(|| {
            let lower = idmapped_clone(&l.p("lower"), userns_fd.as_fd()).unwrap();
            let (upper, work) = (
                open_dir(&l.p("upper")).unwrap(),
                open_dir(&l.p("work")).unwrap(),
            );
            let ovl = mount_overlay(&Overlay {
                lowers: &[lower.as_fd()],
                upper: Some(UpperDirs {
                    upper: upper.as_fd(),
                    work: work.as_fd(),
                }),
                source: "berth-test",
                options: &[],
                attrs: MountAttrFlags::NODEV | MountAttrFlags::NOSUID,
            })
            .unwrap();
            let out = as_container_root_attaching(
                &userns,
                true,
                Some((ovl, &l.p("merged"))),
                &format!(
                    "cd {m}; stat -c %u:%g root-file user-file; touch made-inside; \
                     grep -c ' - overlay berth-test ' /proc/self/mountinfo",
                    m = l.p("merged").display()
                ),
            );
            assert_eq!(out, "0:0\n1000:1000\n1\n");
            // Not in the namespace that made it.
            assert_eq!(fs::read_dir(l.p("merged")).unwrap().count(), 0);
        });
        assert_eq!(probe(&l.p("upper/made-inside")).0, HOST_ROOT);
    }

    /// Two lower layers with a whiteout and an opaque directory in the top one, the way the
    /// image extractor writes them (a 0:0 character device; `trusted.overlay.opaque=y`).
    fn make_two_layers(l: &Layout) {
        mkdir(&l.p("bottom"), 0);
        mkdir(&l.p("bottom/opaque"), 0);
        mkfile(&l.p("bottom/opaque/hidden"), "old\n", 0, 0o644);
        mkfile(&l.p("bottom/deleted"), "old\n", 0, 0o644);
        mkfile(&l.p("bottom/kept"), "bottom\n", 0, 0o644);
        mkdir(&l.p("top"), 0);
        mkdir(&l.p("top/opaque"), 0);
        xattr::set(l.p("top/opaque"), "trusted.overlay.opaque", b"y").unwrap();
        mkfile(&l.p("top/opaque/new"), "new\n", 0, 0o644);
        nix::sys::stat::mknod(
            &l.p("top/deleted"),
            nix::sys::stat::SFlag::S_IFCHR,
            Mode::empty(),
            0,
        )
        .unwrap();
        mkfile(&l.p("top/kept"), "top\n", 1000, 0o644);
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Layer order (top first), whiteouts and opaque markers through idmapped lowers; and
    /// many layers at once, past what a one-page `lowerdir=` string could name.
    #[test]
    fn layer_order_whiteouts_opaque_dirs_and_many_layers() {
        require_root();
        let l = Layout::new();
        make_two_layers(&l);
        for i in 0..150 {
            mkdir(
                &l.p(&format!(
                    "layer-with-a-long-name-like-a-sha256-digest-{i:03}"
                )),
                0,
            );
        }
        mkfile(
            &l.p("layer-with-a-long-name-like-a-sha256-digest-149/deepest"),
            "x\n",
            1000,
            0o644,
        );
        mkdir(&l.p("merged"), 0);
        mkdir(&l.p("many"), 0);
        let userns = UsernsHolder::new(&container_maps()).unwrap();
        let userns_fd = userns.userns_fd().unwrap();
        in_private_mount_ns(|| {
            let top = idmapped_clone(&l.p("top"), userns_fd.as_fd()).unwrap();
            let bottom = idmapped_clone(&l.p("bottom"), userns_fd.as_fd()).unwrap();
            let ovl = mount_overlay(&Overlay {
                lowers: &[top.as_fd(), bottom.as_fd()],
                upper: None,
                source: "berth-test",
                options: &[],
                attrs: MountAttrFlags::RDONLY,
            })
            .unwrap();
            attach(ovl.as_fd(), &l.p("merged")).unwrap();
            assert_eq!(listing(&l.p("merged")), ["kept", "opaque"]);
            assert_eq!(listing(&l.p("merged/opaque")), ["new"]);
            assert_eq!(
                probe(&l.p("merged/kept")),
                (201_000, 201_000, 0o644, "top\n".into())
            );

            let clones: Vec<OwnedFd> = (0..150)
                .map(|i| {
                    let p = l.p(&format!(
                        "layer-with-a-long-name-like-a-sha256-digest-{i:03}"
                    ));
                    idmapped_clone(&p, userns_fd.as_fd()).unwrap()
                })
                .collect();
            let fds: Vec<BorrowedFd<'_>> = clones.iter().map(|c| c.as_fd()).collect();
            let path_bytes: usize = (0..150)
                .map(|i| {
                    l.p(&format!(
                        "layer-with-a-long-name-like-a-sha256-digest-{i:03}"
                    ))
                    .as_os_str()
                    .len()
                        + 1
                })
                .sum();
            assert!(path_bytes > 4096, "the paths alone exceed one page");
            let many = mount_overlay(&Overlay {
                lowers: &fds,
                upper: None,
                source: "berth-test",
                options: &[],
                attrs: MountAttrFlags::RDONLY,
            })
            .unwrap();
            attach(many.as_fd(), &l.p("many")).unwrap();
            assert_eq!(probe(&l.p("many/deepest")).0, 201_000);
        });
    }

    /// The other way to hand idmapped lowers to overlayfs: attach each clone at a mountpoint in
    /// the private mount namespace and name the paths in a classic mount(2) `lowerdir=`.
    /// Works as well, but is bound by the one-page option string.
    #[test]
    fn idmapped_lowers_attached_and_named_in_lowerdir() {
        require_root();
        let l = Layout::new();
        make_lower(&l);
        make_upper(&l, "upper", "work");
        mkdir(&l.p("lower-mapped"), 0);
        mkdir(&l.p("merged"), 0);
        let userns = UsernsHolder::new(&container_maps()).unwrap();
        let userns_fd = userns.userns_fd().unwrap();
        in_private_mount_ns(|| {
            let lower = idmapped_clone(&l.p("lower"), userns_fd.as_fd()).unwrap();
            attach(lower.as_fd(), &l.p("lower-mapped")).unwrap();
            assert_eq!(probe(&l.p("lower-mapped/user-file")).0, 201_000);
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                l.p("lower-mapped").display(),
                l.p("upper").display(),
                l.p("work").display()
            );
            nix::mount::mount(
                Some("berth-test"),
                &l.p("merged"),
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(data.as_str()),
            )
            .unwrap();
            assert_eq!(probe(&l.p("merged/root-file")).0, HOST_ROOT);
            as_container_root(
                &userns,
                false,
                &format!("touch {}/created", l.p("merged").display()),
            );
        });
        assert_eq!(probe(&l.p("upper/created")).0, HOST_ROOT);
    }

    /// Refutes mounting the overlay from inside the container's user namespace: overlayfs
    /// lets container root mount it (overlay is FS_USERNS_MOUNT), but it cannot read
    /// `trusted.overlay.*`, so an opaque directory shows the lower layer's files again —
    /// the wrong root filesystem, without an error. Hence berth mounts it from the initial
    /// user namespace.
    #[test]
    fn overlay_mounted_inside_the_user_namespace_misses_opaque_markers() {
        require_root();
        let l = Layout::new();
        make_two_layers(&l);
        for d in ["top-mapped", "bottom-mapped", "merged"] {
            mkdir(&l.p(d), 0);
        }
        let userns = UsernsHolder::new(&container_maps()).unwrap();
        let userns_fd = userns.userns_fd().unwrap();
        in_private_mount_ns(|| {
            for (from, to) in [("top", "top-mapped"), ("bottom", "bottom-mapped")] {
                let c = idmapped_clone(&l.p(from), userns_fd.as_fd()).unwrap();
                attach(c.as_fd(), &l.p(to)).unwrap();
            }
            let out = as_container_root(
                &userns,
                true,
                &format!(
                    "mount -t overlay -o lowerdir={b}/top-mapped:{b}/bottom-mapped berth-test \
                     {b}/merged && ls {b}/merged/opaque",
                    b = l.base.display()
                ),
            );
            assert_eq!(
                out, "hidden\nnew\n",
                "opaque marker ignored inside the userns"
            );
        });
    }

    #[test]
    fn errors_name_the_layer_and_carry_overlayfs_reason() {
        require_root();
        let l = Layout::new();
        mkdir(&l.p("lower"), 0);
        // An initial-namespace descriptor is refused as an idmap.
        let own = fs::File::open("/proc/self/ns/user").unwrap();
        let err = idmapped_clone(&l.p("lower"), own.as_fd()).unwrap_err();
        assert!(
            matches!(
                err,
                IdmapError::SetIdmap {
                    errno: Errno::EINVAL | Errno::EPERM,
                    ..
                }
            ),
            "{err}"
        );
        let err = idmapped_clone(&l.p("missing"), own.as_fd()).unwrap_err();
        assert!(
            matches!(
                err,
                IdmapError::Clone {
                    errno: Errno::ENOENT,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("missing"));
        // Upper and work on different filesystems: overlayfs says why.
        in_private_mount_ns(|| {
            mkdir(&l.p("rw"), 0);
            mkdir(&l.p("upper"), 0);
            nix::mount::mount(
                Some("tmpfs"),
                &l.p("rw"),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            let lower = open_dir(&l.p("lower")).unwrap();
            let (upper, work) = (
                open_dir(&l.p("upper")).unwrap(),
                open_dir(&l.p("rw")).unwrap(),
            );
            let err = mount_overlay(&Overlay {
                lowers: &[lower.as_fd()],
                upper: Some(UpperDirs {
                    upper: upper.as_fd(),
                    work: work.as_fd(),
                }),
                source: "berth-test",
                options: &[],
                attrs: MountAttrFlags::empty(),
            })
            .unwrap_err();
            assert!(
                matches!(&err, IdmapError::Overlay { step, errno: Errno::EINVAL, .. } if step == "create"),
                "{err}"
            );
            // An option overlayfs does not know: its reason comes back in the error.
            let err = mount_overlay(&Overlay {
                lowers: &[lower.as_fd()],
                upper: None,
                source: "berth-test",
                options: &[("no_such_option", "1")],
                attrs: MountAttrFlags::empty(),
            })
            .unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("Unknown parameter"), "{msg}");
            assert!(msg.contains("no_such_option"), "{msg}");
            // Commas are only for SELinux contexts.
            let err = mount_overlay(&Overlay {
                lowers: &[lower.as_fd()],
                upper: None,
                source: "berth-test",
                options: &[("redirect_dir", "on,metacopy=on")],
                attrs: MountAttrFlags::empty(),
            })
            .unwrap_err();
            assert!(matches!(err, IdmapError::BadOption { .. }), "{err}");
        });
    }
}
