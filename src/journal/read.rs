//! Reading a container's log back: the `journalctl` command line that selects its entries,
//! and the parsing of `journalctl -o json` output (one object per line).
//!
//! journalctl's JSON gives a field's value as a string when it is valid UTF-8 and printable,
//! as an array of byte values otherwise, as `null` when it is larger than journalctl shows
//! (not with `--all`, which we pass), and as an array of those when an entry has the field
//! more than once. [`FieldValue`] covers all four.

use serde_json::Value;

use super::{JournalError, Stream};

/// The most lines `--lines` may ask for (journalctl takes any number; this bounds what a
/// caller can make berthd or berthctl hold).
pub const MAX_LINES: u64 = 10_000_000;
/// The longest `--since`/`--until` value.
const MAX_TIME_LEN: usize = 64;

/// A time as journalctl's `--since`/`--until` take it (`2024-01-31 12:00:00`, `yesterday`,
/// `-1h`, `@1700000000`, …), checked to contain only the characters those forms use. It is
/// always passed as `--since=VALUE`, so it can never be read as another option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSpec(String);

impl TimeSpec {
    pub fn parse(s: &str) -> Result<TimeSpec, JournalError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_TIME_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" :-+.@".contains(&b));
        if ok {
            Ok(TimeSpec(s.to_string()))
        } else {
            Err(JournalError::InvalidQuery(format!("time {s:?}")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which entries `logs` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogQuery {
    /// The container's name (validated by the caller like any container name).
    pub container: String,
    /// Keep printing new entries.
    pub follow: bool,
    /// Only the last N entries; all when `None`.
    pub lines: Option<u64>,
    pub since: Option<TimeSpec>,
    pub until: Option<TimeSpec>,
}

/// The arguments of `journalctl` (after the program name) for `q`.
///
/// Entries are matched on `CONTAINER_NAME=` **and** `_UID=0`: any local process can send a
/// native entry with `CONTAINER_NAME=web`, but only root's entries have `_UID=0`, a trusted
/// field journald sets from the socket's credentials.
pub fn journalctl_args(q: &LogQuery) -> Result<Vec<String>, JournalError> {
    crate::name::validate(&q.container).map_err(|e| JournalError::InvalidQuery(e.to_string()))?;
    let mut a = vec![
        "--output=json".to_string(),
        "--all".into(),
        "--no-pager".into(),
        "--quiet".into(),
    ];
    if q.follow {
        a.push("--follow".into());
    }
    match q.lines {
        Some(n) if n > MAX_LINES => {
            return Err(JournalError::InvalidQuery(format!(
                "--lines {n} (at most {MAX_LINES})"
            )));
        }
        Some(n) => a.push(format!("--lines={n}")),
        // journalctl --follow alone shows only the last 10 entries; logs -f shows all.
        None if q.follow => a.push("--lines=all".into()),
        None => {}
    }
    if let Some(t) = &q.since {
        a.push(format!("--since={}", t.as_str()));
    }
    if let Some(t) = &q.until {
        a.push(format!("--until={}", t.as_str()));
    }
    a.push(format!("CONTAINER_NAME={}", q.container));
    a.push("_UID=0".into());
    Ok(a)
}

/// One field's value in journalctl's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Missing,
    /// journalctl left it out (over its size limit, without `--all`).
    Null,
    /// One or more values, as bytes.
    Values(Vec<Vec<u8>>),
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Array(items) => items
            .iter()
            .map(|b| b.as_u64().filter(|b| *b <= 255).map(|b| b as u8))
            .collect(),
        _ => None,
    }
}

/// Decode one field of a JSON entry.
pub fn field(
    entry: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<FieldValue, JournalError> {
    let bad = || JournalError::InvalidEntry(format!("field {key} is neither text, bytes nor null"));
    match entry.get(key) {
        None => Ok(FieldValue::Missing),
        Some(Value::Null) => Ok(FieldValue::Null),
        Some(v @ Value::String(_)) => Ok(FieldValue::Values(vec![bytes_of(v).ok_or_else(bad)?])),
        Some(Value::Array(items)) => {
            // An array of numbers is one binary value; an array of strings or arrays is
            // several values.
            if items.iter().all(Value::is_number) {
                Ok(FieldValue::Values(vec![
                    bytes_of(&Value::Array(items.clone())).ok_or_else(bad)?,
                ]))
            } else {
                items
                    .iter()
                    .map(|v| bytes_of(v).ok_or_else(bad))
                    .collect::<Result<_, _>>()
                    .map(FieldValue::Values)
            }
        }
        Some(_) => Err(bad()),
    }
}

fn first_text(
    entry: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, JournalError> {
    Ok(match field(entry, key)? {
        FieldValue::Values(v) => v
            .into_iter()
            .next()
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    })
}

/// One log entry of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When journald received it, microseconds since the epoch.
    pub realtime_usec: u64,
    pub stream: Stream,
    /// The line, without its newline; `None` when journalctl left it out (`null`).
    pub message: Option<Vec<u8>>,
    /// The next entry continues this line (an overlong line, cut).
    pub partial: bool,
    /// journalctl's cursor, to resume after.
    pub cursor: String,
    /// berthd's sequence number of the line (`BERTH_SEQ=`, see [`super::feed`]); 0 for
    /// entries from before berthd numbered them.
    pub seq: u64,
}

/// Parse one line of `journalctl -o json` output.
pub fn parse_entry(line: &[u8]) -> Result<LogEntry, JournalError> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| JournalError::InvalidEntry(format!("not JSON: {e}")))?;
    let Value::Object(entry) = v else {
        return Err(JournalError::InvalidEntry("not a JSON object".into()));
    };
    let realtime_usec = first_text(&entry, "__REALTIME_TIMESTAMP")?
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| JournalError::InvalidEntry("no __REALTIME_TIMESTAMP".into()))?;
    let stream = match first_text(&entry, "PRIORITY")?.as_deref() {
        Some("0" | "1" | "2" | "3" | "4") => Stream::Stderr,
        _ => Stream::Stdout,
    };
    let message = match field(&entry, "MESSAGE")? {
        FieldValue::Values(mut v) => Some(v.swap_remove(0)),
        FieldValue::Null => None,
        FieldValue::Missing => Some(Vec::new()),
    };
    let partial = first_text(&entry, "CONTAINER_PARTIAL_MESSAGE")?.as_deref() == Some("true");
    Ok(LogEntry {
        realtime_usec,
        stream,
        message,
        partial,
        cursor: first_text(&entry, "__CURSOR")?.unwrap_or_default(),
        seq: first_text(&entry, "BERTH_SEQ")?
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
    })
}

/// Joins the pieces of cut lines back into whole lines, per stream.
#[derive(Debug, Default)]
pub struct Reassembler {
    pending: [Option<LogEntry>; 2],
    /// Bound on a joined line; a longer one is handed out in pieces after all.
    max: usize,
}

impl Reassembler {
    /// Join lines up to `max` bytes.
    pub fn new(max: usize) -> Self {
        Reassembler {
            pending: [None, None],
            max,
        }
    }

    /// Add an entry; returns a whole line when this entry completes one.
    pub fn push(&mut self, e: LogEntry) -> Option<LogEntry> {
        let slot = &mut self.pending[e.stream as usize];
        let joined = match slot.take() {
            Some(mut first) => {
                match (&mut first.message, e.message) {
                    (Some(a), Some(b)) => a.extend_from_slice(&b),
                    (m, _) => *m = None,
                }
                first.partial = e.partial;
                first.cursor = e.cursor;
                first.seq = e.seq;
                first
            }
            None => e,
        };
        let long = joined.message.as_ref().is_some_and(|m| m.len() >= self.max);
        if joined.partial && !long {
            *slot = Some(joined);
            None
        } else {
            Some(joined)
        }
    }

    /// What is left unfinished (at the end of a non-following read).
    pub fn finish(&mut self) -> Vec<LogEntry> {
        self.pending.iter_mut().filter_map(Option::take).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(container: &str) -> LogQuery {
        LogQuery {
            container: container.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_command_line_matches_the_container_and_root_only() {
        assert_eq!(
            journalctl_args(&q("web")).unwrap(),
            [
                "--output=json",
                "--all",
                "--no-pager",
                "--quiet",
                "CONTAINER_NAME=web",
                "_UID=0"
            ]
        );
        let a = journalctl_args(&LogQuery {
            follow: true,
            since: Some(TimeSpec::parse("-1h").unwrap()),
            until: Some(TimeSpec::parse("2024-01-31 12:00:00").unwrap()),
            ..q("web")
        })
        .unwrap();
        assert!(a.contains(&"--follow".to_string()));
        assert!(a.contains(&"--lines=all".to_string()));
        assert!(a.contains(&"--since=-1h".to_string()));
        assert!(a.contains(&"--until=2024-01-31 12:00:00".to_string()));
        let a = journalctl_args(&LogQuery {
            lines: Some(5),
            follow: true,
            ..q("web")
        })
        .unwrap();
        assert!(a.contains(&"--lines=5".to_string()) && !a.contains(&"--lines=all".to_string()));
    }

    #[test]
    fn bad_queries_are_refused() {
        for name in ["", "a b", "x=y", "-f", "web\n_UID=1000"] {
            assert!(
                matches!(
                    journalctl_args(&q(name)),
                    Err(JournalError::InvalidQuery(_))
                ),
                "{name:?}"
            );
        }
        assert!(
            journalctl_args(&LogQuery {
                lines: Some(MAX_LINES + 1),
                ..q("web")
            })
            .is_err()
        );
        for t in ["", "now; rm", "a\nb", "x=y", &"1".repeat(65)] {
            assert!(TimeSpec::parse(t).is_err(), "{t:?}");
        }
        // Only allowed characters, and still no option: it travels as --since=--follow.
        let a = journalctl_args(&LogQuery {
            since: Some(TimeSpec::parse("--follow").unwrap()),
            ..q("web")
        })
        .unwrap();
        assert!(a.contains(&"--since=--follow".to_string()));
        assert!(!a.contains(&"--follow".to_string()));
    }

    #[test]
    fn messages_parse_as_text_bytes_null_or_several_values() {
        let e = parse_entry(
            br#"{"__REALTIME_TIMESTAMP":"1700000000000001","__CURSOR":"s=1","PRIORITY":"6","MESSAGE":"hello","OBJECT_PID":["42","42"],"BERTH_SEQ":"1700000000000000"}"#,
        )
        .unwrap();
        assert_eq!(e.realtime_usec, 1_700_000_000_000_001);
        assert_eq!(e.seq, 1_700_000_000_000_000);
        assert_eq!(e.stream, Stream::Stdout);
        assert_eq!(e.message.as_deref(), Some(&b"hello"[..]));
        assert_eq!(e.cursor, "s=1");
        assert!(!e.partial);

        let e = parse_entry(
            br#"{"__REALTIME_TIMESTAMP":"1","PRIORITY":"3","MESSAGE":[255,0,104,10],"CONTAINER_PARTIAL_MESSAGE":"true"}"#,
        )
        .unwrap();
        assert_eq!(e.stream, Stream::Stderr);
        assert_eq!(e.seq, 0, "an entry from before the numbering");
        assert_eq!(e.message.as_deref(), Some(&[255u8, 0, 104, 10][..]));
        assert!(e.partial);

        let e = parse_entry(br#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":null}"#).unwrap();
        assert_eq!(e.message, None);

        let m: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"X":["a",[98,99]],"Y":[1,2],"Z":{}}"#).unwrap();
        assert_eq!(
            field(&m, "X").unwrap(),
            FieldValue::Values(vec![b"a".to_vec(), b"bc".to_vec()])
        );
        assert_eq!(
            field(&m, "Y").unwrap(),
            FieldValue::Values(vec![vec![1, 2]])
        );
        assert_eq!(field(&m, "W").unwrap(), FieldValue::Missing);
        assert!(field(&m, "Z").is_err());
    }

    #[test]
    fn malformed_entries_are_errors() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"MESSAGE":"no time"}"#,
            br#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":[256]}"#,
            br#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":3}"#,
        ] {
            assert!(
                matches!(parse_entry(bad), Err(JournalError::InvalidEntry(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cut_lines_are_joined_per_stream() {
        let piece = |stream, m: &str, partial| LogEntry {
            realtime_usec: 1,
            stream,
            message: Some(m.as_bytes().to_vec()),
            partial,
            cursor: String::new(),
            seq: 0,
        };
        let mut r = Reassembler::new(1 << 20);
        assert_eq!(r.push(piece(Stream::Stdout, "ab", true)), None);
        // A stderr line in between does not disturb the stdout one.
        let err = r.push(piece(Stream::Stderr, "oops", false)).unwrap();
        assert_eq!(err.message.as_deref(), Some(&b"oops"[..]));
        assert_eq!(r.push(piece(Stream::Stdout, "cd", true)), None);
        let whole = r.push(piece(Stream::Stdout, "e", false)).unwrap();
        assert_eq!(whole.message.as_deref(), Some(&b"abcde"[..]));
        assert!(!whole.partial);
        assert_eq!(r.push(piece(Stream::Stdout, "tail", true)), None);
        assert_eq!(r.finish().len(), 1);
        // The bound holds.
        let mut r = Reassembler::new(4);
        assert_eq!(r.push(piece(Stream::Stdout, "ab", true)), None);
        assert!(r.push(piece(Stream::Stdout, "cd", true)).is_some());
    }
}
