//! MLS/MCS levels (`s0:c1,c2`) and the category pairs berth gives each container.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SelinuxError;

/// The highest sensitivity (`s15`) and category (`c1023`) of the MCS policies distributions
/// ship (`mls_num_sens`/`mls_num_cats` in refpolicy's build.conf).
pub const MAX_SENSITIVITY: u8 = 15;
pub const MAX_CATEGORY: u16 = 1023;
const WORDS: usize = (MAX_CATEGORY as usize + 1) / 64;

/// One level: a sensitivity and a set of categories, e.g. `s0:c1,c2` or `s0:c0.c9,c20`.
///
/// A range (`s0-s0:c0.c1023`, what unconfined processes run at) is refused: a container's
/// process and files get one level. Categories may come in any order and repeat; they are kept
/// as a set and printed the way the kernel prints them (ascending, runs of three or more as
/// `cX.cY`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Level {
    sensitivity: u8,
    categories: [u64; WORDS],
}

impl Level {
    /// `s<sensitivity>` with no categories.
    pub fn new(sensitivity: u8) -> Result<Level, SelinuxError> {
        if sensitivity > MAX_SENSITIVITY {
            return Err(SelinuxError::Level(format!(
                "sensitivity s{sensitivity} is beyond s{MAX_SENSITIVITY}"
            )));
        }
        Ok(Level {
            sensitivity,
            categories: [0; WORDS],
        })
    }

    /// `s0:cLO,cHI`, the level of a container holding `pair`.
    pub fn of_pair(pair: Pair) -> Level {
        let mut level = Level {
            sensitivity: 0,
            categories: [0; WORDS],
        };
        level.insert(pair.lo);
        level.insert(pair.hi);
        level
    }

    pub fn sensitivity(&self) -> u8 {
        self.sensitivity
    }

    fn insert(&mut self, c: u16) {
        self.categories[usize::from(c / 64)] |= 1 << (c % 64);
    }

    pub fn has_category(&self, c: u16) -> bool {
        c <= MAX_CATEGORY && self.categories[usize::from(c / 64)] & (1 << (c % 64)) != 0
    }

    /// The categories, ascending.
    pub fn categories(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=MAX_CATEGORY).filter(|c| self.has_category(*c))
    }

    /// The pair, when this level is `s0` with exactly two categories (an explicit
    /// `level:s0:cX,cY` the allocator must then reserve).
    pub fn pair(&self) -> Option<Pair> {
        let mut cats = self.categories();
        match (self.sensitivity, cats.next(), cats.next(), cats.next()) {
            (0, Some(lo), Some(hi), None) => Some(Pair { lo, hi }),
            _ => None,
        }
    }
}

fn number(s: &str, what: &str, max: u16, whole: &str) -> Result<u16, SelinuxError> {
    let bad = || SelinuxError::Level(format!("{whole:?}: {what} {s:?} is not a number"));
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(bad());
    }
    let n: u16 = s.parse().map_err(|_| bad())?;
    if n > max {
        return Err(SelinuxError::Level(format!(
            "{whole:?}: {what} {n} is beyond {max}"
        )));
    }
    Ok(n)
}

fn category(s: &str, whole: &str) -> Result<u16, SelinuxError> {
    let digits = s.strip_prefix('c').ok_or_else(|| {
        SelinuxError::Level(format!(
            "{whole:?}: category {s:?} must look like c0..c1023"
        ))
    })?;
    number(digits, "category", MAX_CATEGORY, whole)
}

impl FromStr for Level {
    type Err = SelinuxError;

    /// `sN` or `sN:CATS`, CATS a comma list of `cX` or `cX.cY` (X < Y).
    fn from_str(s: &str) -> Result<Level, SelinuxError> {
        if s.contains('-') {
            return Err(SelinuxError::Level(format!(
                "{s:?} is a range (low-high); a container takes one level such as s0:c1,c2"
            )));
        }
        let (sens, cats) = match s.split_once(':') {
            Some((sens, cats)) => (sens, Some(cats)),
            None => (s, None),
        };
        let digits = sens.strip_prefix('s').ok_or_else(|| {
            SelinuxError::Level(format!("{s:?}: a level starts with a sensitivity s0..s15"))
        })?;
        let mut level =
            Level::new(number(digits, "sensitivity", MAX_SENSITIVITY.into(), s)? as u8)?;
        let Some(cats) = cats else {
            return Ok(level);
        };
        for item in cats.split(',') {
            match item.split_once('.') {
                None => level.insert(category(item, s)?),
                Some((lo, hi)) => {
                    let (lo, hi) = (category(lo, s)?, category(hi, s)?);
                    if lo >= hi {
                        return Err(SelinuxError::Level(format!(
                            "{s:?}: category range {item:?} must run upwards"
                        )));
                    }
                    (lo..=hi).for_each(|c| level.insert(c));
                }
            }
        }
        Ok(level)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.sensitivity)?;
        let cats: Vec<u16> = self.categories().collect();
        let mut sep = ':';
        let mut i = 0;
        while i < cats.len() {
            let mut j = i;
            while j + 1 < cats.len() && cats[j + 1] == cats[j] + 1 {
                j += 1;
            }
            if j - i >= 2 {
                write!(f, "{sep}c{}.c{}", cats[i], cats[j])?;
            } else {
                for c in &cats[i..=j] {
                    write!(f, "{sep}c{c}")?;
                    sep = ',';
                }
            }
            sep = ',';
            i = j + 1;
        }
        Ok(())
    }
}

impl fmt::Debug for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Level({self})")
    }
}

impl TryFrom<String> for Level {
    type Error = SelinuxError;
    fn try_from(s: String) -> Result<Level, SelinuxError> {
        s.parse()
    }
}

/// Written as its text, formatted straight into the output (no temporary string).
impl Serialize for Level {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Two distinct categories `cLO,cHI` (LO < HI ≤ 1023): a container's MCS identity. Two
/// containers with different pairs cannot read each other's files, since neither level
/// dominates the other.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Pair {
    lo: u16,
    hi: u16,
}

/// How many pairs exist: 1024 · 1023 / 2.
pub const PAIRS: u32 = (MAX_CATEGORY as u32 + 1) * MAX_CATEGORY as u32 / 2;

impl Pair {
    /// The pair of two different categories, in either order.
    pub fn new(a: u16, b: u16) -> Result<Pair, SelinuxError> {
        if a == b || a > MAX_CATEGORY || b > MAX_CATEGORY {
            return Err(SelinuxError::Pair(format!(
                "c{a},c{b}: a pair is two different categories from c0..c{MAX_CATEGORY}"
            )));
        }
        Ok(Pair {
            lo: a.min(b),
            hi: a.max(b),
        })
    }

    pub fn lo(self) -> u16 {
        self.lo
    }

    pub fn hi(self) -> u16 {
        self.hi
    }

    /// The pair's position in the allocator's order: (c0,c1), (c0,c2), (c1,c2), (c0,c3), …
    pub fn index(self) -> u32 {
        let hi = u32::from(self.hi);
        hi * (hi - 1) / 2 + u32::from(self.lo)
    }

    /// The pair after this one in that order, wrapping from (c1022,c1023) to (c0,c1).
    pub fn next(self) -> Pair {
        if self.lo + 1 < self.hi {
            Pair {
                lo: self.lo + 1,
                hi: self.hi,
            }
        } else if self.hi < MAX_CATEGORY {
            Pair {
                lo: 0,
                hi: self.hi + 1,
            }
        } else {
            Pair::FIRST
        }
    }

    pub const FIRST: Pair = Pair { lo: 0, hi: 1 };
}

impl FromStr for Pair {
    type Err = SelinuxError;
    /// `cX,cY` with X < Y, as [`Pair`]'s `Display` writes it.
    fn from_str(s: &str) -> Result<Pair, SelinuxError> {
        let bad = || SelinuxError::Pair(format!("{s:?}: a pair looks like c1,c2"));
        let (a, b) = s.split_once(',').ok_or_else(bad)?;
        let parse = |c: &str| c.strip_prefix('c').and_then(|d| d.parse::<u16>().ok());
        match (parse(a), parse(b)) {
            (Some(a), Some(b)) if a < b && format!("c{a},c{b}") == s => Pair::new(a, b),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{},c{}", self.lo, self.hi)
    }
}

impl fmt::Debug for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pair({self})")
    }
}

impl TryFrom<String> for Pair {
    type Error = SelinuxError;
    fn try_from(s: String) -> Result<Pair, SelinuxError> {
        s.parse()
    }
}

impl Serialize for Pair {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        s.parse::<Level>().unwrap_err().to_string()
    }

    #[test]
    fn levels_parse_and_print_canonically() {
        for (input, canonical) in [
            ("s0", "s0"),
            ("s15", "s15"),
            ("s0:c1,c2", "s0:c1,c2"),
            ("s0:c2,c1", "s0:c1,c2"),
            ("s0:c5,c5", "s0:c5"),
            ("s0:c0.c2", "s0:c0.c2"),
            ("s0:c0,c1,c2,c7", "s0:c0.c2,c7"),
            ("s0:c3.c4,c9", "s0:c3,c4,c9"),
            ("s1:c0.c1023", "s1:c0.c1023"),
        ] {
            let level: Level = input.parse().unwrap();
            assert_eq!(level.to_string(), canonical, "{input}");
            assert_eq!(canonical.parse::<Level>().unwrap(), level);
        }
    }

    #[test]
    fn malformed_levels_say_why() {
        assert!(err("s0-s0:c0.c1023").contains("is a range"));
        assert!(err("s16").contains("sensitivity 16 is beyond 15"));
        assert!(err("s0:c1024").contains("category 1024 is beyond 1023"));
        assert!(err("s0:c5.c2").contains("must run upwards"));
        assert!(err("s0:c5.c5").contains("must run upwards"));
        assert!(err("c1,c2").contains("starts with a sensitivity"));
        assert!(err("s0:").contains("must look like c0..c1023"));
        assert!(err("s0:c1,,c2").contains("must look like"));
        assert!(err("s0:1,2").contains("must look like"));
        assert!(err("s0:c01").contains("not a number"));
        assert!(err("s:c1").contains("not a number"));
        assert!(err("s0:c1,c2\"").contains("not a number"));
        assert!(err("s0:c+1").contains("not a number"));
        assert!(err("").contains("starts with a sensitivity"));
    }

    #[test]
    fn pairs() {
        let p = Pair::new(7, 3).unwrap();
        assert_eq!((p.lo(), p.hi()), (3, 7));
        assert_eq!(p.to_string(), "c3,c7");
        assert_eq!("c3,c7".parse::<Pair>().unwrap(), p);
        assert!(Pair::new(4, 4).is_err());
        assert!(Pair::new(0, 1024).is_err());
        for bad in [
            "c7,c3", "c3", "c3,c3", "3,7", "c3, c7", "c03,c7", "c3,c7,c9",
        ] {
            assert!(bad.parse::<Pair>().is_err(), "{bad}");
        }
        assert_eq!(Level::of_pair(p).to_string(), "s0:c3,c7");
        assert_eq!(Level::of_pair(p).pair(), Some(p));
        assert_eq!("s0:c1,c2,c3".parse::<Level>().unwrap().pair(), None);
        assert_eq!("s1:c1,c2".parse::<Level>().unwrap().pair(), None);
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            "\"c3,c7\"",
            "stored as text"
        );
    }

    #[test]
    fn pair_order_visits_every_pair_once() {
        let mut p = Pair::FIRST;
        let mut seen = 0u32;
        loop {
            assert_eq!(p.index(), seen);
            seen += 1;
            p = p.next();
            if p == Pair::FIRST {
                break;
            }
        }
        assert_eq!(seen, PAIRS);
        assert_eq!(PAIRS, 523_776);
    }
}
