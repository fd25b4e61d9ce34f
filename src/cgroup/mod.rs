//! Reading a container's cgroup: usage counters, limits and OOM kills, from the kernel's own
//! files, on both layouts found in the field behind one interface.
//!
//! - Unified (cgroup v2 at /sys/fs/cgroup): everything is in one directory per cgroup.
//! - Hybrid (v1 controllers beside a cgroup2 mount without controllers, as systemd sets up with
//!   `systemd.unified_cgroup_hierarchy=0`): memory, pids, blkio and cpuacct live in per-controller
//!   v1 trees; CPU time comes from the cgroup2 tree's `cpu.stat`, which the kernel keeps for every
//!   cgroup whether or not a controller is enabled there.
//!
//! berth never writes limits here: those are scope properties, set through systemd. The only
//! write is the v1 OOM event registration (`cgroup.event_control`), which changes no setting.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The cgroup hierarchies mounted on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The cgroup2 mount, if any.
    pub unified: Option<PathBuf>,
    /// Whether the cgroup2 mount is the only one (all controllers are v2).
    pub unified_only: bool,
    /// v1 controller name → mount point (a co-mounted `cpu,cpuacct` appears under both names).
    pub v1: BTreeMap<String, PathBuf>,
}

impl Hierarchies {
    /// The hierarchies of the calling process's mount namespace.
    pub fn detect() -> io::Result<Hierarchies> {
        Ok(Hierarchies::from_mountinfo(&fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// Parse `/proc/self/mountinfo` (see proc(5)): field 5 is the mount point; after the `-`
    /// separator come the filesystem type, the source and the super options, which name the v1
    /// controllers of a `cgroup` mount.
    pub fn from_mountinfo(text: &str) -> Hierarchies {
        let mut h = Hierarchies::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(mnt), Some(fstype), Some(opts)) =
                (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
            else {
                continue;
            };
            let mnt = PathBuf::from(unescape_octal(mnt));
            match *fstype {
                "cgroup2" => h.unified = Some(mnt),
                "cgroup" => {
                    for opt in opts.split(',') {
                        if matches!(
                            opt,
                            "memory" | "pids" | "cpu" | "cpuacct" | "blkio" | "devices"
                        ) {
                            h.v1.insert(opt.to_string(), mnt.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        h.unified_only = h.unified.is_some() && h.v1.is_empty();
        h
    }

    /// The cgroup directories of a process, from `/proc/PID/cgroup` (cgroups(7): lines
    /// `ID:CONTROLLERS:PATH`, `0::PATH` for cgroup2). Paths are relative to the reader's cgroup
    /// namespace, which for berthd is the machine's (or the test host's).
    pub fn of_process(&self, pid: u32) -> io::Result<Cgroup> {
        Ok(self.from_proc_cgroup(&fs::read_to_string(format!("/proc/{pid}/cgroup"))?))
    }

    pub fn from_proc_cgroup(&self, text: &str) -> Cgroup {
        let mut cg = Cgroup::default();
        for line in text.lines() {
            let mut it = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if ctrls.is_empty() {
                if let Some(u) = &self.unified {
                    cg.unified = Some(u.join(rel));
                }
                continue;
            }
            for c in ctrls.split(',') {
                if let Some(m) = self.v1.get(c) {
                    cg.v1.insert(c.to_string(), m.join(rel));
                }
            }
        }
        cg.unified_only = self.unified_only;
        cg
    }
}

fn unescape_octal(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One cgroup (a container's scope), as directories in each hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cgroup {
    pub unified: Option<PathBuf>,
    pub unified_only: bool,
    pub v1: BTreeMap<String, PathBuf>,
}

/// A snapshot of a cgroup's counters. `None` where this layout or kernel has no such number;
/// limits are `None` when unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub cpu_usage_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub pids_limit: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
}

/// v1 reports "no limit" as a huge page-aligned number.
const V1_UNLIMITED: u64 = 1 << 62;

impl Cgroup {
    fn v2(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// Where the memory controller's files are, and whether that is a v2 directory.
    fn memory(&self) -> Option<(&Path, bool)> {
        match self.v1.get("memory") {
            Some(p) => Some((p, false)),
            None if self.unified_only => self.v2().map(|p| (p, true)),
            None => None,
        }
    }

    fn controller(&self, name: &str) -> Option<(&Path, bool)> {
        match self.v1.get(name) {
            Some(p) => Some((p, false)),
            None if self.unified_only => self.v2().map(|p| (p, true)),
            None => None,
        }
    }

    /// Read every counter. Missing files give `None`; a cgroup that is gone gives an error.
    pub fn stats(&self) -> io::Result<Stats> {
        let mut s = Stats::default();
        // CPU: cgroup2 cpu.stat exists on every cgroup2 directory (also in hybrid mode);
        // cpuacct.usage is the v1 fallback.
        if let Some(d) = self.v2() {
            s.cpu_usage_ns = read_opt(&d.join("cpu.stat"))?
                .and_then(|t| keyed(&t, "usage_usec"))
                .map(|us| us.saturating_mul(1000));
        }
        if s.cpu_usage_ns.is_none()
            && let Some((d, false)) = self.controller("cpuacct")
        {
            s.cpu_usage_ns = read_u64(&d.join("cpuacct.usage"))?;
        }
        match self.memory() {
            Some((d, true)) => {
                s.memory_bytes = read_u64(&d.join("memory.current"))?;
                s.memory_limit_bytes = read_limit(&d.join("memory.max"))?;
                s.oom_kills =
                    read_opt(&d.join("memory.events"))?.and_then(|t| keyed(&t, "oom_kill"));
            }
            Some((d, false)) => {
                s.memory_bytes = read_u64(&d.join("memory.usage_in_bytes"))?;
                s.memory_limit_bytes =
                    read_u64(&d.join("memory.limit_in_bytes"))?.filter(|v| *v < V1_UNLIMITED);
                s.oom_kills =
                    read_opt(&d.join("memory.oom_control"))?.and_then(|t| keyed(&t, "oom_kill"));
            }
            None => {}
        }
        if let Some((d, _)) = self.controller("pids") {
            s.pids = read_u64(&d.join("pids.current"))?;
            s.pids_limit = read_limit(&d.join("pids.max"))?;
        }
        match self.controller("blkio") {
            Some((d, false)) => {
                let t = read_opt(&d.join("blkio.throttle.io_service_bytes_recursive"))?;
                let t = match t {
                    Some(t) => Some(t),
                    None => read_opt(&d.join("blkio.throttle.io_service_bytes"))?,
                };
                if let Some(t) = t {
                    let (r, w) = blkio_totals(&t);
                    s.io_read_bytes = Some(r);
                    s.io_write_bytes = Some(w);
                }
            }
            _ => {
                if let Some(d) = self.v2()
                    && let Some(t) = read_opt(&d.join("io.stat"))?
                {
                    let (r, w) = io_stat_totals(&t);
                    s.io_read_bytes = Some(r);
                    s.io_write_bytes = Some(w);
                }
            }
        }
        Ok(s)
    }

    /// The file whose changes signal an OOM kill, and how to watch it: on v2 `memory.events`
    /// (inotify IN_MODIFY, see cgroup-v2.rst), on v1 `memory.oom_control` (an eventfd registered
    /// through `cgroup.event_control`, see cgroup-v1/memory.rst §9).
    pub fn oom_watch(&self) -> Option<OomWatch> {
        match self.memory()? {
            (d, true) => Some(OomWatch::Events(d.join("memory.events"))),
            (d, false) => Some(OomWatch::V1 {
                oom_control: d.join("memory.oom_control"),
                event_control: d.join("cgroup.event_control"),
            }),
        }
    }

    /// Whether systemd delegated this cgroup: since systemd 251 it marks the cgroup2 directory
    /// of a `Delegate=yes` unit with the `trusted.delegate` xattr (and `user.delegate`, which
    /// unprivileged readers may see), on the unified and the hybrid layout alike.
    pub fn delegated(&self) -> io::Result<bool> {
        let Some(d) = self.v2() else {
            return Ok(false);
        };
        for attr in ["trusted.delegate", "user.delegate"] {
            if xattr::get(d, attr)?.is_some_and(|v| v == b"1") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The OOM kill counter alone (cheap: one small file).
    pub fn oom_kills(&self) -> io::Result<Option<u64>> {
        Ok(match self.memory() {
            Some((d, true)) => {
                read_opt(&d.join("memory.events"))?.and_then(|t| keyed(&t, "oom_kill"))
            }
            Some((d, false)) => {
                read_opt(&d.join("memory.oom_control"))?.and_then(|t| keyed(&t, "oom_kill"))
            }
            None => None,
        })
    }
}

/// How to be told about OOM kills in one cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OomWatch {
    Events(PathBuf),
    V1 {
        oom_control: PathBuf,
        event_control: PathBuf,
    },
}

/// Network counters of a process's network namespace, from `/proc/PID/net/dev`, loopback
/// excluded (what leaves or enters the container).
pub fn net_totals(pid: u32) -> io::Result<(u64, u64)> {
    Ok(net_dev_totals(&fs::read_to_string(format!(
        "/proc/{pid}/net/dev"
    ))?))
}

/// Sum rx and tx bytes over every interface but `lo` (proc_net(5): two header lines, then
/// `IFACE: rx_bytes packets ... (8 rx fields) tx_bytes ...`).
pub fn net_dev_totals(text: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in text.lines().skip(2) {
        let Some((iface, rest)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        rx = rx.saturating_add(f.first().copied().unwrap_or(0));
        tx = tx.saturating_add(f.get(8).copied().unwrap_or(0));
    }
    (rx, tx)
}

fn read_opt(p: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && p.parent().is_some_and(Path::exists) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn read_u64(p: &Path) -> io::Result<Option<u64>> {
    Ok(read_opt(p)?.and_then(|s| s.trim().parse().ok()))
}

/// A v2-style limit file: a number, or `max` for none.
fn read_limit(p: &Path) -> io::Result<Option<u64>> {
    Ok(read_opt(p)?.and_then(|s| s.trim().parse().ok()))
}

/// `key value` lines (cpu.stat, memory.events, memory.oom_control).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// cgroup2 io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N ...` per device.
fn io_stat_totals(text: &str) -> (u64, u64) {
    let mut r = 0u64;
    let mut w = 0u64;
    for kv in text.split_whitespace() {
        if let Some(v) = kv.strip_prefix("rbytes=") {
            r = r.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = kv.strip_prefix("wbytes=") {
            w = w.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (r, w)
}

/// v1 blkio: `MAJ:MIN Read N` / `MAJ:MIN Write N` per device, then `Total N`.
fn blkio_totals(text: &str) -> (u64, u64) {
    let mut r = 0u64;
    let mut w = 0u64;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_, op, n] = f.as_slice() {
            let n: u64 = n.parse().unwrap_or(0);
            match *op {
                "Read" => r = r.saturating_add(n),
                "Write" => w = w.saturating_add(n),
                _ => {}
            }
        }
    }
    (r, w)
}

/// Where a process is, per mounted hierarchy, as a joiner needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    /// Its cgroup2 directory: a child is started right in it (`CLONE_INTO_CGROUP`), or, where
    /// that cannot be done, its `cgroup.procs` is written.
    pub unified: Option<PathBuf>,
    /// The `tasks` file of its cgroup in every v1 hierarchy (`name=systemd` included).
    pub v1_tasks: Vec<PathBuf>,
}

/// Where the process whose `/proc/PID/cgroup` is `proc_cgroup` is, in every hierarchy mounted
/// in `mountinfo` (the reader's `/proc/self/mountinfo`; paths relative to the reader's cgroup
/// namespace). A hierarchy that is not mounted is left out.
///
/// A single-threaded joiner writes `0` into each v1 `tasks` file: moving the writing thread
/// alone is the one migration the kernel does without taking the global
/// `cgroup_threadgroup_rwsem` for writing, whose first taking waits for an RCU grace period
/// (`cgroup_joins_write_start`; measured in the disposable host: 0.2 ms for `tasks`, 10–20 ms
/// for the first `cgroup.procs` — the whole gap between `berthctl exec` and `nsenter`). For
/// cgroup2 the same lock is avoided by starting the joiner inside (`CLONE_INTO_CGROUP`).
pub fn membership(mountinfo: &str, proc_cgroup: &str) -> Membership {
    // (controllers of a v1 mount, or None for cgroup2; mount point; root inside the hierarchy)
    let mut mounts: Vec<(Option<Vec<String>>, PathBuf, String)> = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(root), Some(mnt), Some(fstype), Some(opts)) = (
            fields.get(3),
            fields.get(4),
            fields.get(sep + 1),
            fields.get(sep + 3),
        ) else {
            continue;
        };
        let ctrls = match *fstype {
            "cgroup2" => None,
            "cgroup" => Some(
                opts.split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro" | "xattr" | "nsdelegate"))
                    .map(String::from)
                    .collect(),
            ),
            _ => continue,
        };
        mounts.push((
            ctrls,
            PathBuf::from(unescape_octal(mnt)),
            unescape_octal(root),
        ));
    }
    let mut out = Membership::default();
    for line in proc_cgroup.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let want: Vec<&str> = ctrls.split(',').filter(|c| !c.is_empty()).collect();
        let found = mounts.iter().find(|(have, _, _)| match have {
            None => want.is_empty(),
            Some(have) => !want.is_empty() && want.iter().all(|w| have.iter().any(|h| h == w)),
        });
        let Some((kind, mnt, root)) = found else {
            continue;
        };
        // A hierarchy mounted from a subdirectory shows paths below it.
        let Some(rel) = path
            .strip_prefix(root.as_str())
            .or_else(|| path.strip_prefix('/'))
        else {
            continue;
        };
        let dir = mnt.join(rel.trim_start_matches('/'));
        if kind.is_none() {
            out.unified.get_or_insert(dir);
        } else {
            let tasks = dir.join("tasks");
            if !out.v1_tasks.contains(&tasks) {
                out.v1_tasks.push(tasks);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hierarchy_of_a_process_has_its_procs_file() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";
        let cg = "\
12:memory:/machine.slice/berth-web.scope
4:cpu,cpuacct:/machine.slice/berth-web.scope
1:name=systemd:/machine.slice/berth-web.scope
0::/machine.slice/berth-web.scope
9:freezer:/
";
        let m = membership(mountinfo, cg);
        let s: Vec<String> = m.v1_tasks.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            s,
            [
                "/sys/fs/cgroup/memory/machine.slice/berth-web.scope/tasks",
                "/sys/fs/cgroup/cpu,cpuacct/machine.slice/berth-web.scope/tasks",
                "/sys/fs/cgroup/systemd/machine.slice/berth-web.scope/tasks",
            ]
        );
        assert_eq!(
            m.unified,
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/machine.slice/berth-web.scope"
            ))
        );
        // The unified layout: one file.
        let unified = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            membership(unified, "0::/machine.slice/x.scope\n"),
            Membership {
                unified: Some(PathBuf::from("/sys/fs/cgroup/machine.slice/x.scope")),
                v1_tasks: vec![],
            }
        );
    }

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const UNIFIED_MOUNTS: &str = "\
25 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const SCOPE: &str = "machine.slice/berth-web.scope";

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// The mount points of `h`, moved under `root` so the fixtures live in a temp dir.
    fn rebase(h: &Hierarchies, root: &Path) -> Hierarchies {
        let under = |p: &PathBuf| root.join(p.strip_prefix("/").unwrap());
        Hierarchies {
            unified: h.unified.as_ref().map(under),
            unified_only: h.unified_only,
            v1: h.v1.iter().map(|(k, v)| (k.clone(), under(v))).collect(),
        }
    }

    #[test]
    fn detects_both_layouts() {
        let h = Hierarchies::from_mountinfo(HYBRID_MOUNTS);
        assert_eq!(
            h.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert!(!h.unified_only);
        assert_eq!(h.v1["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert!(!h.v1.contains_key("name=systemd"));
        let u = Hierarchies::from_mountinfo(UNIFIED_MOUNTS);
        assert!(u.unified_only);
        assert_eq!(u.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        let odd = Hierarchies::from_mountinfo("1 2 0:1 / /a\\040b rw - cgroup2 cgroup2 rw\n");
        assert_eq!(odd.unified.as_deref(), Some(Path::new("/a b")));
    }

    #[test]
    fn unified_stats_from_fixture() {
        let tmp = tempfile::tempdir().unwrap();
        let h = rebase(&Hierarchies::from_mountinfo(UNIFIED_MOUNTS), tmp.path());
        let d = format!("sys/fs/cgroup/{SCOPE}");
        let t = tmp.path();
        write(
            t,
            &format!("{d}/cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        write(t, &format!("{d}/memory.current"), "8192\n");
        write(t, &format!("{d}/memory.max"), "536870912\n");
        write(
            t,
            &format!("{d}/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n",
        );
        write(t, &format!("{d}/pids.current"), "4\n");
        write(t, &format!("{d}/pids.max"), "max\n");
        write(
            t,
            &format!("{d}/io.stat"),
            "8:0 rbytes=100 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n8:16 rbytes=5 wbytes=0\n",
        );
        let cg = h.from_proc_cgroup(&format!("0::/{SCOPE}\n"));
        let s = cg.stats().unwrap();
        assert_eq!(
            s,
            Stats {
                cpu_usage_ns: Some(1_500_000),
                memory_bytes: Some(8192),
                memory_limit_bytes: Some(512 << 20),
                pids: Some(4),
                pids_limit: None,
                io_read_bytes: Some(105),
                io_write_bytes: Some(20),
                oom_kills: Some(1),
            }
        );
        assert_eq!(cg.oom_kills().unwrap(), Some(1));
        assert!(
            matches!(cg.oom_watch(), Some(OomWatch::Events(p)) if p.ends_with("memory.events"))
        );
    }

    #[test]
    fn hybrid_stats_from_fixture() {
        let tmp = tempfile::tempdir().unwrap();
        let h = rebase(&Hierarchies::from_mountinfo(HYBRID_MOUNTS), tmp.path());
        let t = tmp.path();
        let c = "sys/fs/cgroup";
        write(
            t,
            &format!("{c}/unified/{SCOPE}/cpu.stat"),
            "usage_usec 42\n",
        );
        write(
            t,
            &format!("{c}/memory/{SCOPE}/memory.usage_in_bytes"),
            "4096\n",
        );
        write(
            t,
            &format!("{c}/memory/{SCOPE}/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(
            t,
            &format!("{c}/memory/{SCOPE}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(t, &format!("{c}/pids/{SCOPE}/pids.current"), "3\n");
        write(t, &format!("{c}/pids/{SCOPE}/pids.max"), "200\n");
        write(
            t,
            &format!("{c}/blkio/{SCOPE}/blkio.throttle.io_service_bytes_recursive"),
            "8:0 Read 300\n8:0 Write 10\n8:0 Sync 0\n8:0 Total 310\nTotal 310\n",
        );
        let proc_cgroup = format!(
            "9:name=systemd:/{SCOPE}\n8:pids:/{SCOPE}\n7:blkio:/{SCOPE}\n4:memory:/{SCOPE}\n\
             2:cpuacct:/machine.slice\n1:cpu:/{SCOPE}\n0::/{SCOPE}\n"
        );
        let cg = h.from_proc_cgroup(&proc_cgroup);
        assert_eq!(cg.v1["memory"], t.join(format!("{c}/memory/{SCOPE}")));
        let s = cg.stats().unwrap();
        assert_eq!(
            s,
            Stats {
                cpu_usage_ns: Some(42_000),
                memory_bytes: Some(4096),
                memory_limit_bytes: None,
                pids: Some(3),
                pids_limit: Some(200),
                io_read_bytes: Some(300),
                io_write_bytes: Some(10),
                oom_kills: Some(2),
            }
        );
        assert!(matches!(cg.oom_watch(), Some(OomWatch::V1 { .. })));
    }

    #[test]
    fn delegation_mark_on_both_layouts() {
        for mounts in [UNIFIED_MOUNTS, HYBRID_MOUNTS] {
            let tmp = tempfile::tempdir().unwrap();
            let h = rebase(&Hierarchies::from_mountinfo(mounts), tmp.path());
            let dir = h.unified.as_ref().unwrap().join(SCOPE);
            fs::create_dir_all(&dir).unwrap();
            let cg = h.from_proc_cgroup(&format!("0::/{SCOPE}\n"));
            assert!(!cg.delegated().unwrap());
            xattr::set(&dir, "user.delegate", b"1").unwrap();
            assert!(cg.delegated().unwrap());
        }
    }

    #[test]
    fn a_removed_cgroup_is_an_error_not_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let h = rebase(&Hierarchies::from_mountinfo(UNIFIED_MOUNTS), tmp.path());
        let cg = h.from_proc_cgroup("0::/machine.slice/gone.scope\n");
        assert!(cg.stats().is_err());
    }

    #[test]
    fn net_dev_skips_loopback() {
        let text = "Inter-|   Receive                            |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  host0: 5000      50    0    0    0     0          0         0      700       7    0    0    0     0       0          0
";
        assert_eq!(net_dev_totals(text), (5000, 700));
    }
}
