//! Unit properties: the typed value systemd expects for each ([`PropValue`]), a small builder
//! ([`UnitProperties`]), and the one conversion from berth's checked limits and raw properties
//! to them.

use zbus::Variant;

use crate::spec::limits::{DEFAULT_DEVICES, Limit, Limits};
use crate::spec::props::{RawProperty, RawValue};

/// A typed value for one systemd unit property (the D-Bus signatures systemd expects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    /// `t`
    U64(u64),
    /// `s`
    Str(String),
    /// `b`
    Bool(bool),
    /// `ay` (CPU and NUMA node bitmasks)
    Bytes(Vec<u8>),
    /// `a(st)` (per-device IO limits)
    PathU64(Vec<(String, u64)>),
    /// `a(ss)` (device allow list)
    PathStr(Vec<(String, String)>),
}

impl PropValue {
    fn variant(&self) -> Variant<'static> {
        match self {
            PropValue::U64(n) => Variant::from(*n),
            PropValue::Str(s) => Variant::from(s.clone()),
            PropValue::Bool(b) => Variant::from(*b),
            PropValue::Bytes(b) => Variant::from(b.clone()),
            PropValue::PathU64(l) => Variant::from(l.clone()),
            PropValue::PathStr(l) => Variant::from(l.clone()),
        }
    }
}

/// A property name and its value.
pub type Property = (&'static str, PropValue);

/// Properties for a unit, in order, as `StartTransientUnit` and `SetUnitProperties` take them.
#[derive(Default, Debug, Clone)]
pub struct UnitProperties {
    props: Vec<Property>,
    /// `PIDs` (`au`), for a scope.
    pids: Vec<u32>,
}

impl UnitProperties {
    pub fn set(mut self, key: &'static str, v: PropValue) -> Self {
        self.props.push((key, v));
        self
    }
    /// The processes a scope starts with.
    pub fn pids(mut self, pids: Vec<u32>) -> Self {
        self.pids = pids;
        self
    }
    pub fn string(self, key: &'static str, v: impl Into<String>) -> Self {
        self.set(key, PropValue::Str(v.into()))
    }
    pub fn boolean(self, key: &'static str, v: bool) -> Self {
        self.set(key, PropValue::Bool(v))
    }
    /// Every property of `props`, in order.
    pub fn extend(mut self, props: impl IntoIterator<Item = Property>) -> Self {
        self.props.extend(props);
        self
    }
    /// The property names, in order (for tests and logs).
    pub fn keys(&self) -> Vec<&'static str> {
        self.props.iter().map(|(k, _)| *k).collect()
    }
    pub fn get(&self, key: &str) -> Option<&PropValue> {
        self.props.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    /// The D-Bus form.
    pub fn variants(&self) -> Vec<(&'static str, Variant<'static>)> {
        let mut v: Vec<_> = self.props.iter().map(|(k, v)| (*k, v.variant())).collect();
        if !self.pids.is_empty() {
            v.push(("PIDs", Variant::from(self.pids.clone())));
        }
        v
    }
}

/// The properties of a container's scope: in `machine.slice`, delegated, collected when it
/// ends (also when failed), with accounting on so that every controller's files exist for stats
/// (on hybrid hosts systemd only creates a unit's v1 cgroups for the controllers it needs). The
/// leader's PID is added with `PIDs`.
///
/// Not `AddRef=yes`: systemd keeps such a reference by watching the caller's bus name, with one
/// `NameOwnerChanged` match rule on its own bus connection per referenced unit. dbus-daemon
/// allows a connection 512 match rules (`max_match_rules_per_connection` on the system bus), so
/// the ~508th running container made systemd's AddMatch fail; sd-bus then drops systemd's bus
/// connection, and the JobRemoved of the scope being started was lost ("did not finish within
/// 30s"), and with it berthd's Subscribe. berthd does not need the reference: it waits for the
/// scope's job, stops the scope itself when the leader exits, and a scope collected earlier
/// (its processes gone) is fine to it.
pub fn scope_properties(description: &str, leader: u32) -> UnitProperties {
    UnitProperties::default()
        .string("Description", description)
        .string("Slice", "machine.slice")
        .boolean("Delegate", true)
        .string("CollectMode", "inactive-or-failed")
        .boolean("CPUAccounting", true)
        .boolean("MemoryAccounting", true)
        .boolean("TasksAccounting", true)
        .boolean("IOAccounting", true)
        .pids(vec![leader])
}

/// The device policy: closed, the minimal /dev's devices, and the extra devices. berth-helper
/// makes an extra node with mknod(2) once it is in the scope, and the device cgroup checks that
/// against `m`; `m` only lets the container make nodes for this same device, whose opens stay
/// limited to the `r`/`w` granted, so it is always added.
pub fn device_policy(limits: &Limits) -> Vec<Property> {
    let mut allow: Vec<(String, String)> = DEFAULT_DEVICES
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    allow.extend(limits.devices().map(|d| {
        let mut perms = d.perms.clone();
        if !perms.contains('m') {
            perms.push('m');
        }
        (d.path.clone(), perms)
    }));
    vec![
        ("DevicePolicy", PropValue::Str("closed".into())),
        ("DeviceAllow", PropValue::PathStr(allow)),
    ]
}

/// The scope properties of checked limits (devices excluded: see [`device_policy`]). Per-device
/// rates of one direction become one property.
pub fn limit_properties(limits: &Limits) -> Vec<Property> {
    let mut props = Vec::new();
    let mut read = Vec::new();
    let mut write = Vec::new();
    for l in &limits.0 {
        let p = l.key().property;
        match l {
            Limit::Memory(b) | Limit::MemoryHigh(b) | Limit::MemorySwap(b) => {
                props.push((p, PropValue::U64(b.0)))
            }
            Limit::Cpus(q) => props.push((p, PropValue::U64(q.0))),
            Limit::CpuWeight(w) | Limit::IoWeight(w) => props.push((p, PropValue::U64(w.0))),
            Limit::CpuSet(c) => props.push((p, PropValue::Bytes(c.0.clone()))),
            Limit::Pids(c) => props.push((p, PropValue::U64(c.0))),
            Limit::ReadBps(r) => read.push((r.device.clone(), r.bytes_per_sec)),
            Limit::WriteBps(r) => write.push((r.device.clone(), r.bytes_per_sec)),
            Limit::Device(_) | Limit::NetworkRate(_) => {}
        }
    }
    if !read.is_empty() {
        props.push(("IOReadBandwidthMax", PropValue::PathU64(read)));
    }
    if !write.is_empty() {
        props.push(("IOWriteBandwidthMax", PropValue::PathU64(write)));
    }
    props
}

/// The properties that carry `key`'s settings in `limits`, or reset it when it has none (what
/// systemd takes as "no limit" for each) — what a live change of one key sends.
pub fn key_properties(limits: &Limits, key: &'static crate::spec::limits::Key) -> Vec<Property> {
    let only = Limits(limits.of_key(key.name).cloned().collect());
    let props = limit_properties(&only);
    if !props.is_empty() || key.property.is_empty() {
        return props;
    }
    let reset = match key.kind {
        crate::spec::limits::Kind::CpuSet => PropValue::Bytes(Vec::new()),
        crate::spec::limits::Kind::DeviceRate => PropValue::PathU64(Vec::new()),
        _ => PropValue::U64(u64::MAX),
    };
    vec![(key.property, reset)]
}

/// The D-Bus property of a checked raw property.
pub fn raw_property(p: &RawProperty) -> Property {
    let v = match &p.value {
        RawValue::Bytes(b) => PropValue::U64(b.0),
        RawValue::Usec(n) => PropValue::U64(*n),
        RawValue::Weight(w) => PropValue::U64(w.0),
        RawValue::CpuSet(c) => PropValue::Bytes(c.0.clone()),
        RawValue::Count(c) => PropValue::U64(c.0),
        RawValue::DeviceBytes(d, n) | RawValue::DeviceCount(d, n) => {
            PropValue::PathU64(vec![(d.clone(), *n)])
        }
        RawValue::DeviceAllow(d, m) => PropValue::PathStr(vec![(d.clone(), m.clone())]),
        RawValue::Bool(b) => PropValue::Bool(*b),
        RawValue::Text(s) => PropValue::Str(s.clone()),
    };
    (p.bus_name, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::limits::{Bytes, Count, CpuQuota, Device, DeviceRate, Weight, key};

    #[test]
    fn scope_properties_are_delegated_in_machine_slice() {
        let p = scope_properties("berth container web", 42);
        assert_eq!(
            p.keys(),
            [
                "Description",
                "Slice",
                "Delegate",
                "CollectMode",
                "CPUAccounting",
                "MemoryAccounting",
                "TasksAccounting",
                "IOAccounting",
            ]
        );
        assert_eq!(
            p.get("Slice"),
            Some(&PropValue::Str("machine.slice".into()))
        );
        assert_eq!(p.get("Delegate"), Some(&PropValue::Bool(true)));
        let v = p.variants();
        assert!(
            v.iter()
                .any(|(k, v)| *k == "PIDs" && *v == Variant::from(vec![42u32]))
        );
    }

    #[test]
    fn limits_become_scope_properties() {
        let l = Limits(vec![
            Limit::Memory(Bytes(512 << 20)),
            Limit::Cpus(CpuQuota(1_500_000)),
            Limit::CpuWeight(Weight(50)),
            Limit::Pids(Count(200)),
            Limit::ReadBps(DeviceRate {
                device: "/dev/vda".into(),
                bytes_per_sec: 10,
            }),
            Limit::ReadBps(DeviceRate {
                device: "/dev/vdb".into(),
                bytes_per_sec: 20,
            }),
        ]);
        assert_eq!(
            limit_properties(&l),
            [
                ("MemoryMax", PropValue::U64(512 << 20)),
                ("CPUQuotaPerSecUSec", PropValue::U64(1_500_000)),
                ("CPUWeight", PropValue::U64(50)),
                ("TasksMax", PropValue::U64(200)),
                (
                    "IOReadBandwidthMax",
                    PropValue::PathU64(vec![("/dev/vda".into(), 10), ("/dev/vdb".into(), 20)])
                ),
            ]
        );
        assert_eq!(
            key_properties(&Limits::default(), key("memory").unwrap()),
            [("MemoryMax", PropValue::U64(u64::MAX))]
        );
        assert_eq!(
            key_properties(&Limits::default(), key("cpuset").unwrap()),
            [("AllowedCPUs", PropValue::Bytes(vec![]))]
        );
    }

    #[test]
    fn the_device_policy_is_closed_and_adds_m() {
        let l = Limits(vec![Limit::Device(Device {
            path: "/dev/null".into(),
            perms: "r".into(),
            block: false,
            major: 1,
            minor: 3,
        })]);
        let p = device_policy(&l);
        assert_eq!(p[0], ("DevicePolicy", PropValue::Str("closed".into())));
        let PropValue::PathStr(allow) = &p[1].1 else {
            panic!()
        };
        assert!(allow.contains(&("/dev/null".into(), "rm".into())));
        assert!(allow.contains(&("char-pts".into(), "rw".into())));
    }
}
