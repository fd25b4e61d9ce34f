//! Option dictionaries (`a{sv}`) as berth reads them: strictly. A key given twice is refused
//! (zbus's `HashMap` would silently keep the last), an unknown key is refused, and a value of
//! the wrong type is refused, each with `InvalidArgument` naming the key.

use std::collections::HashMap;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use zbus::{OwnedVariant, Signature, Type};

use super::Error;

/// An `a{sv}` dictionary that keeps every entry, in order, duplicates included.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Options(pub Vec<(String, OwnedVariant)>);

impl Type for Options {
    const SIGNATURE: &'static Signature = <HashMap<String, OwnedVariant> as Type>::SIGNATURE;
}

impl Serialize for Options {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Options;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a dictionary of options")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Options, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, OwnedVariant>()? {
                    out.push((k, v));
                }
                Ok(Options(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Options {
    /// Take the options apart against the keys a method knows: each key at most once, none
    /// other. Returns the values by key.
    pub fn check(self, known: &[&str]) -> Result<Checked, Error> {
        let mut m: HashMap<String, OwnedVariant> = HashMap::with_capacity(self.0.len());
        for (k, v) in self.0 {
            if !known.contains(&k.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "unknown option {k:?} (known: {})",
                    known.join(", ")
                )));
            }
            if m.contains_key(&k) {
                return Err(Error::InvalidArgument(format!(
                    "option {k:?} is given twice"
                )));
            }
            m.insert(k, v);
        }
        Ok(Checked(m))
    }

    pub fn insert(&mut self, key: &str, value: OwnedVariant) {
        self.0.push((key.to_string(), value));
    }
}

/// Options checked against a method's keys.
pub struct Checked(HashMap<String, OwnedVariant>);

impl Checked {
    /// The value of `key` as `T`, if given.
    pub fn take<T: TryFrom<OwnedVariant>>(&mut self, key: &str) -> Result<Option<T>, Error> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(v) => T::try_from(v)
                .map(Some)
                .map_err(|_| Error::InvalidArgument(format!("option {key} has the wrong type"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::wire::{Endian, serialized::Context, to_bytes};

    fn round_trip(entries: &[(&str, OwnedVariant)]) -> Options {
        let o = Options(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.try_clone().unwrap()))
                .collect(),
        );
        let ctx = Context::new(Endian::Little, 0);
        let bytes = to_bytes(ctx, &o).unwrap();
        bytes.deserialize::<Options>().unwrap().0
    }

    fn v(s: &str) -> OwnedVariant {
        OwnedVariant::try_from(zbus::Variant::from(s)).unwrap()
    }

    #[test]
    fn duplicates_survive_the_wire_and_are_refused() {
        let o = round_trip(&[("Image", v("nosuch")), ("Image", v("default"))]);
        assert_eq!(o.0.len(), 2);
        let e = o.check(&["Image"]).err().unwrap();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("twice")));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        let o = round_trip(&[("Bogus", v("x"))]);
        assert!(
            matches!(o.check(&["Image"]), Err(Error::InvalidArgument(m)) if m.contains("unknown option"))
        );
        let mut c = round_trip(&[("AutoRemove", v("yes"))])
            .check(&["AutoRemove"])
            .unwrap();
        assert!(c.take::<bool>("AutoRemove").is_err());
        let mut c = round_trip(&[("Image", v("web"))])
            .check(&["Image"])
            .unwrap();
        assert_eq!(c.take::<String>("Image").unwrap().as_deref(), Some("web"));
        assert_eq!(c.take::<String>("Image").unwrap(), None);
    }
}
