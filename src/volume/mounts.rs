//! The mounts a container asks for — `-v/--volume`, `--mount` (docker's syntax) and
//! `--tmpfs` — parsed once into typed [`MountSpec`]s.
//!
//! Decisions where docker and podman differ or allow more than berth does:
//! - **Propagation** (`bind-propagation=`, `-v …:shared`): berth's mounts are always private,
//!   so `private`/`rprivate` are accepted and `shared`, `slave` and their `r` forms refused —
//!   a shared mount would let the container's mounts appear on the host.
//! - **Ownership**: `U` (podman's chown of the source) is refused; berth never chowns on the
//!   host. Volumes are always mounted with the container's ID map; a bind mount only with
//!   `idmap` (else the host's IDs show through, as overflow IDs under a user namespace).
//! - **SELinux**: `z`/`Z` (podman's `relabel=shared|private`) are kept in
//!   [`MountSpec::relabel`] for the labelling layer to honour.
//! - **Ignored, reported**: `volume-opt=` and `volume-nocopy` (berth's one volume driver,
//!   `local`, takes no options and never copies image content into a volume), `nocopy`,
//!   `consistency=`.
//! - **Paths**: the container path is absolute, normalised (`//` and `.` dropped), without
//!   `..`, not `/`, and not `/proc`, `/sys` or below; the host path is absolute, without
//!   `..`, and exists. At most [`MAX_MOUNTS`] per container, no two on the same target.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{VolumeError, VolumeName};

/// The most mounts one container may ask for.
pub const MAX_MOUNTS: usize = 64;
/// The longest path accepted on either side.
const MAX_PATH: usize = 4096;

/// A checked, normalised absolute path inside the container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerPath(String);

impl ContainerPath {
    pub fn parse(s: &str) -> Result<ContainerPath, VolumeError> {
        let bad = |reason: &'static str| VolumeError::InvalidPath {
            path: s.to_string(),
            reason,
        };
        if !s.starts_with('/') {
            return Err(bad("a container path must be absolute"));
        }
        if s.len() > MAX_PATH || s.contains('\0') {
            return Err(bad("too long, or contains NUL"));
        }
        let mut names = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(bad("contains '..'")),
                c => names.push(c),
            }
        }
        if names.is_empty() {
            return Err(bad("cannot mount over /"));
        }
        if matches!(names[0], "proc" | "sys") {
            return Err(bad("cannot mount over /proc or /sys"));
        }
        Ok(ContainerPath(format!("/{}", names.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Without the leading `/`, as the mount plan's operations name paths.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }
}

impl TryFrom<String> for ContainerPath {
    type Error = VolumeError;
    fn try_from(s: String) -> Result<Self, VolumeError> {
        ContainerPath::parse(&s)
    }
}

impl From<ContainerPath> for String {
    fn from(p: ContainerPath) -> String {
        p.0
    }
}

/// A checked absolute host path, for a bind mount's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPath(PathBuf);

impl HostPath {
    /// Check `s`: absolute, no `..`, and `exists` says it is there (berthd passes a real
    /// check; the source is opened again, as a descriptor, when the container starts).
    pub fn parse(s: &str, exists: &dyn Fn(&Path) -> bool) -> Result<HostPath, VolumeError> {
        let bad = |reason: &'static str| VolumeError::InvalidPath {
            path: s.to_string(),
            reason,
        };
        if !s.starts_with('/') {
            return Err(bad("a host path must be absolute"));
        }
        if s.len() > MAX_PATH || s.contains('\0') {
            return Err(bad("too long, or contains NUL"));
        }
        if s.split('/').any(|c| c == "..") {
            return Err(bad("contains '..'"));
        }
        let p = PathBuf::from(s);
        if !exists(&p) {
            return Err(bad("does not exist on the host"));
        }
        Ok(HostPath(p))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

/// SELinux relabelling asked for (`z`: shared label, `Z`: private to this container).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Relabel {
    Shared,
    Private,
}

/// What is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// A host file or directory. `recursive`: with the mounts below it (docker's default).
    Bind { path: HostPath, recursive: bool },
    /// A named volume, or an anonymous one (`None`: made for this container, removed with
    /// it).
    Volume { name: Option<VolumeName> },
    /// A fresh tmpfs: at most `size` bytes, root directory mode `mode`.
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
}

/// One mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub source: MountSource,
    pub target: ContainerPath,
    pub read_only: bool,
    /// Map the source's IDs through the container's user namespace (always for volumes).
    pub idmap: bool,
    pub relabel: Option<Relabel>,
    /// `noexec`: default for tmpfs, off for binds and volumes.
    pub noexec: bool,
    /// `nosuid` and `nodev`: default for tmpfs; binds and volumes are always nosuid and nodev
    /// in berth (the plan adds them).
    pub nosuid: bool,
    pub nodev: bool,
}

/// A parsed mount and the options it ignored (to tell the user once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub spec: MountSpec,
    pub ignored: Vec<String>,
}

fn invalid(what: &str, s: &str, reason: impl Into<String>) -> VolumeError {
    VolumeError::InvalidMount {
        option: format!("{what} {s}"),
        reason: reason.into(),
    }
}

fn base(source: MountSource, target: ContainerPath) -> MountSpec {
    let tmpfs = matches!(source, MountSource::Tmpfs { .. });
    MountSpec {
        idmap: matches!(source, MountSource::Volume { .. }),
        source,
        target,
        read_only: false,
        relabel: None,
        noexec: tmpfs,
        nosuid: tmpfs,
        nodev: tmpfs,
    }
}

/// Sizes as docker's `tmpfs-size`/`size=` take them: bytes, or with `k`, `m`, `g`, `t`
/// (powers of 1024, upper or lower case, optionally followed by `b`).
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let t = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, shift) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 10),
        'm' => (&t[..t.len() - 1], 20),
        'g' => (&t[..t.len() - 1], 30),
        't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>()
        .ok()?
        .checked_mul(1u64 << shift)
        .filter(|n| *n > 0)
}

fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

/// Propagation settings: private ones are what berth does anyway; others are refused.
fn propagation(what: &str, s: &str, p: &str) -> Result<(), VolumeError> {
    match p {
        "private" | "rprivate" => Ok(()),
        "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => Err(invalid(
            what,
            s,
            format!("{p} propagation is not supported: berth's mounts are private"),
        )),
        _ => Err(invalid(what, s, format!("unknown propagation {p:?}"))),
    }
}

/// `-v/--volume HOST:CONTAINER[:OPTS]`, `-v NAME:CONTAINER[:OPTS]` or `-v CONTAINER`
/// (an anonymous volume). OPTS: `ro`, `rw`, `idmap`, `z`, `Z`, `nocopy`, `rbind`, `bind`,
/// `private`, `rprivate`, `noexec`, `exec`.
pub fn parse_volume(s: &str, exists: &dyn Fn(&Path) -> bool) -> Result<Parsed, VolumeError> {
    let what = "--volume";
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [target] => (None, *target, ""),
        [source, target] => (Some(*source), *target, ""),
        [source, target, opts] => (Some(*source), *target, *opts),
        _ => return Err(invalid(what, s, "expected HOST:CONTAINER[:OPTIONS]")),
    };
    let target = ContainerPath::parse(target)?;
    let source = match source {
        None => MountSource::Volume { name: None },
        Some(src) if src.starts_with('/') => MountSource::Bind {
            path: HostPath::parse(src, exists)?,
            recursive: true,
        },
        Some(src) if src.starts_with('.') || src.starts_with('~') => {
            return Err(invalid(what, s, "a host path must be absolute"));
        }
        Some(src) => MountSource::Volume {
            name: Some(VolumeName::parse(src)?),
        },
    };
    let is_bind = matches!(source, MountSource::Bind { .. });
    let mut spec = base(source, target);
    let mut ignored = Vec::new();
    let (mut ro, mut rw) = (false, false);
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => ro = true,
            "rw" => rw = true,
            "idmap" => spec.idmap = true,
            "z" => spec.relabel = Some(Relabel::Shared),
            "Z" => spec.relabel = Some(Relabel::Private),
            "noexec" => spec.noexec = true,
            "exec" => spec.noexec = false,
            "nocopy" => ignored.push(o.to_string()),
            "rbind" | "bind" if is_bind => {
                if let MountSource::Bind { recursive, .. } = &mut spec.source {
                    *recursive = o == "rbind";
                }
            }
            "U" => return Err(invalid(what, s, "berth never chowns host files (U)")),
            "O" => return Err(invalid(what, s, "overlay volumes (O) are not supported")),
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave") => {
                propagation(what, s, p)?
            }
            o => return Err(invalid(what, s, format!("unknown option {o:?}"))),
        }
    }
    if ro && rw {
        return Err(invalid(what, s, "both ro and rw"));
    }
    spec.read_only = ro;
    Ok(Parsed { spec, ignored })
}

fn boolean(what: &str, s: &str, key: &str, v: Option<&str>) -> Result<bool, VolumeError> {
    match v {
        None | Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(v) => Err(invalid(
            what,
            s,
            format!("{key}={v}: expected true or false"),
        )),
    }
}

/// `--mount type=bind|volume|tmpfs,source=…,target=…,…` as docker takes it: keys `type`
/// (default `volume`), `source`/`src`, `target`/`destination`/`dst`, `readonly`/`ro`,
/// `bind-propagation`, `bind-nonrecursive`, `idmap`, `relabel`, `volume-opt`,
/// `volume-nocopy`, `tmpfs-size`, `tmpfs-mode`, `consistency`. Values may not contain
/// commas (docker's CSV quoting is not supported).
pub fn parse_mount<'a>(s: &'a str, exists: &dyn Fn(&Path) -> bool) -> Result<Parsed, VolumeError> {
    let what = "--mount";
    let mut kind = "volume";
    let (mut src, mut dst) = (None, None);
    let mut ro = false;
    let mut idmap = None;
    let mut relabel = None;
    let mut recursive = true;
    let mut size = None;
    let mut mode = None;
    let mut ignored = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for kv in s.split(',') {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        };
        let canonical = match k {
            "src" => "source",
            "destination" | "dst" => "target",
            "ro" => "readonly",
            k => k,
        };
        if canonical != "volume-opt" && !seen.insert(canonical) {
            return Err(invalid(what, s, format!("{k} given twice")));
        }
        let need = |v: Option<&'a str>| -> Result<&'a str, VolumeError> {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| invalid(what, s, format!("{k} needs a value")))
        };
        match canonical {
            "type" => kind = need(v)?,
            "source" => src = Some(need(v)?),
            "target" => dst = Some(need(v)?),
            "readonly" => ro = boolean(what, s, k, v)?,
            "bind-propagation" => propagation(what, s, need(v)?)?,
            "bind-nonrecursive" => recursive = !boolean(what, s, k, v)?,
            "idmap" => idmap = Some(boolean(what, s, k, v)?),
            "relabel" => {
                relabel = Some(match need(v)? {
                    "shared" => Relabel::Shared,
                    "private" => Relabel::Private,
                    r => return Err(invalid(what, s, format!("relabel={r}: shared or private"))),
                })
            }
            "volume-opt" | "volume-nocopy" | "consistency" => ignored.push(kv.to_string()),
            "tmpfs-size" => {
                size = Some(
                    parse_size(need(v)?)
                        .ok_or_else(|| invalid(what, s, format!("bad size {kv}")))?,
                )
            }
            "tmpfs-mode" => {
                mode = Some(
                    parse_mode(need(v)?)
                        .ok_or_else(|| invalid(what, s, format!("bad mode {kv}")))?,
                )
            }
            "" => return Err(invalid(what, s, "empty option")),
            _ => return Err(invalid(what, s, format!("unknown option {k:?}"))),
        }
    }
    let target = ContainerPath::parse(dst.ok_or_else(|| invalid(what, s, "target= is required"))?)?;
    let only = |keys: &[&str]| -> Result<(), VolumeError> {
        let bad: Vec<&&str> = seen
            .iter()
            .filter(|k| {
                k.starts_with("bind-") || k.starts_with("tmpfs-") || k.starts_with("volume-")
            })
            .filter(|k| !keys.contains(k))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(invalid(
                what,
                s,
                format!("{bad:?} do not apply to type={kind}"),
            ))
        }
    };
    let source = match kind {
        "bind" => {
            only(&["bind-propagation", "bind-nonrecursive"])?;
            MountSource::Bind {
                path: HostPath::parse(
                    src.ok_or_else(|| invalid(what, s, "a bind needs source="))?,
                    exists,
                )?,
                recursive,
            }
        }
        "volume" => {
            only(&["volume-opt", "volume-nocopy"])?;
            MountSource::Volume {
                name: src.map(VolumeName::parse).transpose()?,
            }
        }
        "tmpfs" => {
            only(&["tmpfs-size", "tmpfs-mode"])?;
            if src.is_some() {
                return Err(invalid(what, s, "a tmpfs has no source"));
            }
            MountSource::Tmpfs { size, mode }
        }
        k => {
            return Err(invalid(
                what,
                s,
                format!("unknown type {k:?} (bind, volume or tmpfs)"),
            ));
        }
    };
    let mut spec = base(source, target);
    spec.read_only = ro;
    spec.relabel = relabel;
    if let Some(i) = idmap {
        if matches!(spec.source, MountSource::Tmpfs { .. }) {
            return Err(invalid(what, s, "a tmpfs has no IDs to map"));
        }
        spec.idmap = i;
    }
    Ok(Parsed { spec, ignored })
}

/// `--tmpfs PATH[:OPTIONS]`: `size=`, `mode=`, `ro`, `rw`, `noexec`/`exec`,
/// `nosuid`/`suid`, `nodev`/`dev` (default: `rw,noexec,nosuid,nodev`, as podman).
pub fn parse_tmpfs(s: &str) -> Result<Parsed, VolumeError> {
    let what = "--tmpfs";
    let (path, opts) = s.split_once(':').unwrap_or((s, ""));
    let mut size = None;
    let mut mode = None;
    let mut spec = base(
        MountSource::Tmpfs {
            size: None,
            mode: None,
        },
        ContainerPath::parse(path)?,
    );
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                size = Some(parse_size(v).ok_or_else(|| invalid(what, s, format!("bad size {o}")))?)
            }
            Some(("mode", v)) => {
                mode = Some(parse_mode(v).ok_or_else(|| invalid(what, s, format!("bad mode {o}")))?)
            }
            Some(_) => return Err(invalid(what, s, format!("unknown option {o:?}"))),
            None => match o {
                "ro" => spec.read_only = true,
                "rw" => spec.read_only = false,
                "noexec" => spec.noexec = true,
                "exec" => spec.noexec = false,
                "nosuid" => spec.nosuid = true,
                "suid" => spec.nosuid = false,
                "nodev" => spec.nodev = true,
                "dev" => spec.nodev = false,
                o => return Err(invalid(what, s, format!("unknown option {o:?}"))),
            },
        }
    }
    spec.source = MountSource::Tmpfs { size, mode };
    Ok(Parsed {
        spec,
        ignored: vec![],
    })
}

/// Check a container's whole list: at most [`MAX_MOUNTS`], and no two on one target.
pub fn check_list(specs: &[MountSpec]) -> Result<(), VolumeError> {
    if specs.len() > MAX_MOUNTS {
        return Err(VolumeError::TooManyMounts(specs.len()));
    }
    let mut targets = std::collections::BTreeSet::new();
    for s in specs {
        if !targets.insert(s.target.as_str()) {
            return Err(VolumeError::DuplicateTarget(s.target.as_str().to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yes(_: &Path) -> bool {
        true
    }

    fn no(_: &Path) -> bool {
        false
    }

    fn vol(s: &str) -> MountSpec {
        parse_volume(s, &yes).unwrap().spec
    }

    #[test]
    fn container_paths_are_normalised_and_checked() {
        assert_eq!(
            ContainerPath::parse("/data//x/./y/").unwrap().as_str(),
            "/data/x/y"
        );
        assert_eq!(ContainerPath::parse("/data").unwrap().relative(), "data");
        assert_eq!(ContainerPath::parse("/procfs").unwrap().as_str(), "/procfs");
        for bad in [
            "data",
            "",
            "/",
            "//.",
            "/a/../b",
            "/proc",
            "/proc/sys/x",
            "/sys/",
            "//sys/fs",
            "/a\0",
        ] {
            assert!(
                matches!(
                    ContainerPath::parse(bad),
                    Err(VolumeError::InvalidPath { .. })
                ),
                "{bad:?}"
            );
        }
        let json = serde_json::to_string(&ContainerPath::parse("/x").unwrap()).unwrap();
        assert_eq!(json, "\"/x\"");
        assert!(serde_json::from_str::<ContainerPath>("\"/proc\"").is_err());
    }

    #[test]
    fn volume_flags_in_all_their_forms() {
        let s = vol("/srv/www:/usr/share/nginx/html:ro,Z");
        assert_eq!(
            s.source,
            MountSource::Bind {
                path: HostPath(PathBuf::from("/srv/www")),
                recursive: true
            }
        );
        assert_eq!(s.target.as_str(), "/usr/share/nginx/html");
        assert!(s.read_only && !s.idmap && !s.noexec);
        assert_eq!(s.relabel, Some(Relabel::Private));
        let s = vol("/srv:/srv:rw,idmap,bind,rprivate");
        assert!(!s.read_only && s.idmap);
        assert!(matches!(
            s.source,
            MountSource::Bind {
                recursive: false,
                ..
            }
        ));
        let s = vol("pgdata:/var/lib/postgresql/data");
        assert_eq!(
            s.source,
            MountSource::Volume {
                name: Some(VolumeName::parse("pgdata").unwrap())
            }
        );
        assert!(s.idmap, "volumes are always idmapped");
        let s = vol("/scratch");
        assert_eq!(s.source, MountSource::Volume { name: None });
        assert_eq!(s.target.as_str(), "/scratch");
        let p = parse_volume("cache:/cache:nocopy", &yes).unwrap();
        assert_eq!(p.ignored, ["nocopy"]);
    }

    #[test]
    fn bad_volume_flags_say_why() {
        for bad in [
            "relative:/x:ro:extra",
            "./rel:/x",
            "~/x:/x",
            "/a:/b:ro,rw",
            "/a:/b:shared",
            "/a:/b:rslave",
            "/a:/b:U",
            "/a:/b:O",
            "/a:/b:wat",
            "/a:relative",
            "/a:/proc",
            "/a/../etc:/x",
            "bad name:/x",
            "-v:/x",
        ] {
            assert!(parse_volume(bad, &yes).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_volume("/missing:/x", &no),
            Err(VolumeError::InvalidPath {
                reason: "does not exist on the host",
                ..
            })
        ));
    }

    #[test]
    fn mount_flags_in_docker_syntax() {
        let m = |s| parse_mount(s, &yes).unwrap();
        let p = m("type=bind,source=/srv,target=/data,readonly,bind-propagation=rprivate");
        assert!(p.spec.read_only);
        assert!(matches!(
            p.spec.source,
            MountSource::Bind {
                recursive: true,
                ..
            }
        ));
        let p = m("type=bind,src=/srv,dst=/data,ro=false,bind-nonrecursive=true,idmap");
        assert!(!p.spec.read_only && p.spec.idmap);
        assert!(matches!(
            p.spec.source,
            MountSource::Bind {
                recursive: false,
                ..
            }
        ));
        let p = m("source=db,destination=/var/lib/db,volume-opt=type=nfs,volume-nocopy");
        assert_eq!(
            p.spec.source,
            MountSource::Volume {
                name: Some(VolumeName::parse("db").unwrap())
            }
        );
        assert_eq!(p.ignored, ["volume-opt=type=nfs", "volume-nocopy"]);
        let p = m("type=volume,target=/anon");
        assert_eq!(p.spec.source, MountSource::Volume { name: None });
        let p = m("type=tmpfs,target=/run/x,tmpfs-size=64m,tmpfs-mode=1777");
        assert_eq!(
            p.spec.source,
            MountSource::Tmpfs {
                size: Some(64 << 20),
                mode: Some(0o1777)
            }
        );
        assert!(p.spec.noexec && p.spec.nosuid && p.spec.nodev);
        let p = m("type=bind,source=/a,target=/b,relabel=shared");
        assert_eq!(p.spec.relabel, Some(Relabel::Shared));
    }

    #[test]
    fn bad_mount_flags_say_why() {
        for bad in [
            "type=bind,target=/x",
            "type=bind,source=/a",
            "type=bind,source=relative,target=/x",
            "type=bind,source=/a,target=/x,bind-propagation=shared",
            "type=bind,source=/a,target=/x,bind-propagation=weird",
            "type=bind,source=/a,target=/x,tmpfs-size=1m",
            "type=tmpfs,source=/a,target=/x",
            "type=tmpfs,target=/x,tmpfs-size=lots",
            "type=tmpfs,target=/x,tmpfs-mode=999",
            "type=tmpfs,target=/x,idmap",
            "type=volume,target=/x,bind-propagation=private",
            "type=nfs,target=/x",
            "type=bind,source=/a,target=/x,target=/y",
            "type=bind,source=/a,target=/x,readonly=maybe",
            "type=bind,source=/a,target=/x,,",
            "type=bind,source=/a,target=/x,frobnicate",
            "type=bind,source=,target=/x",
            "type=bind,source=/a,target=/sys/kernel",
        ] {
            assert!(parse_mount(bad, &yes).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tmpfs_flags() {
        let p = parse_tmpfs("/run").unwrap().spec;
        assert_eq!(
            p.source,
            MountSource::Tmpfs {
                size: None,
                mode: None
            }
        );
        assert!(p.noexec && p.nosuid && p.nodev && !p.read_only);
        let p = parse_tmpfs("/tmp:size=512k,mode=1777,exec,rw")
            .unwrap()
            .spec;
        assert_eq!(
            p.source,
            MountSource::Tmpfs {
                size: Some(512 << 10),
                mode: Some(0o1777)
            }
        );
        assert!(!p.noexec);
        let p = parse_tmpfs("/x:ro,suid,dev").unwrap().spec;
        assert!(p.read_only && !p.nosuid && !p.nodev);
        for bad in [
            "/x:size=0",
            "/x:size=-1",
            "/x:mode=8",
            "/x:uid=0",
            "/x:bogus",
            "x",
            "/proc:size=1m",
        ] {
            assert!(parse_tmpfs(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("10kb"), Some(10 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("99999999999t"), None, "overflow");
        assert_eq!(parse_size("m"), None);
    }

    #[test]
    fn a_list_is_bounded_and_targets_unique() {
        let one = |t: &str| parse_tmpfs(t).unwrap().spec;
        let list: Vec<MountSpec> = (0..MAX_MOUNTS).map(|i| one(&format!("/t{i}"))).collect();
        assert!(check_list(&list).is_ok());
        let mut over = list.clone();
        over.push(one("/extra"));
        assert!(matches!(
            check_list(&over),
            Err(VolumeError::TooManyMounts(65))
        ));
        let dup = vec![one("/a"), vol("/srv:/a/")];
        assert!(matches!(check_list(&dup), Err(VolumeError::DuplicateTarget(t)) if t == "/a"));
    }
}
