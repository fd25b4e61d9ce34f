//! The container table's map, with each container's `ListContainers` record kept encoded
//! (see `dbus::listing`): encoding 1000 records took berthd about 7 ms a call, copying them
//! takes a tenth of a millisecond.
//!
//! A record is dropped whenever its entry can change: every way to reach an entry mutably
//! ([`Entries::get_mut`], [`Entries::iter_mut`], [`Entries::insert`], [`Entries::remove`])
//! goes through here, and reading needs no more than `&`. So a record is never older than its
//! entry, whatever the code between the lock and the change does; it is remade at the next
//! listing. Each record has two forms (all fields, and redacted for callers other than root),
//! each made on its first use.

use std::collections::BTreeMap;

/// A value with its encoded records.
struct Slot<V> {
    value: V,
    /// By [`View`]: the record of everything, the redacted one.
    records: [Option<Box<[u8]>>; 2],
}

impl<V> Slot<V> {
    fn new(value: V) -> Slot<V> {
        Slot {
            value,
            records: [None, None],
        }
    }

    /// The value, for a change: its records go.
    fn changing(&mut self) -> &mut V {
        self.records = [None, None];
        &mut self.value
    }
}

/// Which record of an entry: all fields (root) or redacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Full = 0,
    Redacted = 1,
}

/// Values by name, sorted, each with its encoded records.
pub struct Entries<V> {
    map: BTreeMap<String, Slot<V>>,
}

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries {
            map: BTreeMap::new(),
        }
    }
}

impl<V> Entries<V> {
    pub fn get(&self, name: &str) -> Option<&V> {
        self.map.get(name).map(|s| &s.value)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.map.iter().map(|(k, s)| (k, &s.value))
    }

    /// The value of `name`, to change: its records are dropped.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.map.get_mut(name).map(Slot::changing)
    }

    /// Every value, to change: all records are dropped.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut V)> {
        self.map.iter_mut().map(|(k, s)| (k, s.changing()))
    }

    pub fn insert(&mut self, name: String, value: V) -> Option<V> {
        self.map.insert(name, Slot::new(value)).map(|s| s.value)
    }

    pub fn remove(&mut self, name: &str) -> Option<V> {
        self.map.remove(name).map(|s| s.value)
    }

    /// Every value's record of `view`, in name order; `encode` makes those not kept (and
    /// they are kept from then on). A value whose record cannot be made is left out, with
    /// the error passed to `failed`.
    pub fn records<E>(
        &mut self,
        view: View,
        mut encode: impl FnMut(&str, &V, View) -> Result<Vec<u8>, E>,
        mut failed: impl FnMut(&str, E),
    ) -> Vec<(&str, &[u8])> {
        let mut out = Vec::with_capacity(self.map.len());
        for (name, slot) in self.map.iter_mut() {
            let kept = &mut slot.records[view as usize];
            if kept.is_none() {
                match encode(name, &slot.value, view) {
                    Ok(r) => *kept = Some(r.into_boxed_slice()),
                    Err(e) => failed(name, e),
                }
            }
            if let Some(r) = kept {
                out.push((name.as_str(), &r[..]));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// An encoder that counts its calls and encodes the value with the view.
    struct Counting(Cell<usize>);

    impl Counting {
        fn encode(&self) -> impl FnMut(&str, &u32, View) -> Result<Vec<u8>, String> + '_ {
            |name, v, view| {
                self.0.set(self.0.get() + 1);
                Ok(format!("{name}={v}/{view:?}").into_bytes())
            }
        }
    }

    fn listed(e: &mut Entries<u32>, view: View, c: &Counting) -> Vec<String> {
        e.records(view, c.encode(), |_, _: String| panic!("no failure"))
            .into_iter()
            .map(|(_, r)| String::from_utf8(r.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn records_are_made_once_and_remade_only_after_a_change() {
        let c = Counting(Cell::new(0));
        let mut e = Entries::default();
        e.insert("b".into(), 2);
        e.insert("a".into(), 1);
        assert_eq!(listed(&mut e, View::Full, &c), ["a=1/Full", "b=2/Full"]);
        assert_eq!(c.0.get(), 2);
        // Kept: nothing is encoded again.
        assert_eq!(listed(&mut e, View::Full, &c), ["a=1/Full", "b=2/Full"]);
        assert_eq!(c.0.get(), 2);
        // Reading does not drop a record.
        assert_eq!(e.get("a"), Some(&1));
        assert_eq!(e.iter().count(), 2);
        assert_eq!(c.0.get(), 2);
        // A change through get_mut drops that entry's record only.
        *e.get_mut("b").unwrap() = 20;
        assert_eq!(listed(&mut e, View::Full, &c), ["a=1/Full", "b=20/Full"]);
        assert_eq!(c.0.get(), 3);
        // Reaching an entry mutably drops its record even if nothing changes.
        e.get_mut("a");
        listed(&mut e, View::Full, &c);
        assert_eq!(c.0.get(), 4);
        // iter_mut drops them all.
        for (_, v) in e.iter_mut() {
            *v += 1;
        }
        assert_eq!(listed(&mut e, View::Full, &c), ["a=2/Full", "b=21/Full"]);
        assert_eq!(c.0.get(), 6);
    }

    #[test]
    fn the_two_views_are_kept_apart_and_both_dropped_by_a_change() {
        let c = Counting(Cell::new(0));
        let mut e = Entries::default();
        e.insert("a".into(), 1);
        assert_eq!(listed(&mut e, View::Redacted, &c), ["a=1/Redacted"]);
        assert_eq!(listed(&mut e, View::Full, &c), ["a=1/Full"]);
        assert_eq!(c.0.get(), 2);
        listed(&mut e, View::Redacted, &c);
        listed(&mut e, View::Full, &c);
        assert_eq!(c.0.get(), 2);
        *e.get_mut("a").unwrap() = 5;
        assert_eq!(listed(&mut e, View::Redacted, &c), ["a=5/Redacted"]);
        assert_eq!(listed(&mut e, View::Full, &c), ["a=5/Full"]);
        assert_eq!(c.0.get(), 4);
    }

    #[test]
    fn replaced_and_removed_entries_take_their_records_with_them() {
        let c = Counting(Cell::new(0));
        let mut e = Entries::default();
        e.insert("a".into(), 1);
        listed(&mut e, View::Full, &c);
        // A new value under the same name is encoded anew.
        assert_eq!(e.insert("a".into(), 9), Some(1));
        assert_eq!(listed(&mut e, View::Full, &c), ["a=9/Full"]);
        assert_eq!(e.remove("a"), Some(9));
        assert!(listed(&mut e, View::Full, &c).is_empty());
        e.insert("a".into(), 3);
        assert_eq!(listed(&mut e, View::Full, &c), ["a=3/Full"]);
        assert_eq!(c.0.get(), 3);
    }

    #[test]
    fn a_record_that_cannot_be_made_is_left_out_and_tried_again() {
        let mut e = Entries::default();
        e.insert("a".into(), 1u32);
        e.insert("b".into(), 2u32);
        let mut failures = Vec::new();
        let got: Vec<&str> = e
            .records(
                View::Full,
                |n, _, _| if n == "a" { Err("no") } else { Ok(vec![1]) },
                |n, err| failures.push(format!("{n}: {err}")),
            )
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(got, ["b"]);
        assert_eq!(failures, ["a: no"]);
        let again = e.records(View::Full, |_, _, _| Ok::<_, &str>(vec![2]), |_, _| {});
        assert_eq!(again.len(), 2);
    }
}
