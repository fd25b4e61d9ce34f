//! The IDs the host already uses (/etc/subuid, /etc/subgid, passwd and group), which no container
//! range may overlap.

use super::*;

/// A range the host already uses, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reserved {
    pub(super) range: IdRange,
    pub(super) conflict: Conflict,
}

/// The IDs the host uses, from `subuid`, `subgid`, `passwd` and `group`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostIds {
    pub(super) reserved: Vec<Reserved>,
}

impl HostIds {
    /// Read `ETC/subuid`, `ETC/subgid`, `ETC/passwd` and `ETC/group` (berthd passes `/etc`).
    /// A missing file counts as empty (many hosts have no subuid); an unreadable one or a line
    /// that cannot be parsed is an error, since its IDs would otherwise be ignored.
    pub fn load(etc: &Path) -> Result<HostIds> {
        let read = |name: &str| -> Result<(PathBuf, String)> {
            let path = etc.join(name);
            match fs::read_to_string(&path) {
                Ok(s) => Ok((path, s)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((path, String::new())),
                Err(source) => Err(UsernsError::ReadHostFile { path, source }),
            }
        };
        let mut host = HostIds::default();
        for name in ["subuid", "subgid"] {
            let (path, text) = read(name)?;
            host.add_subid_file(&path, &text)?;
        }
        for name in ["passwd", "group"] {
            let (path, text) = read(name)?;
            host.add_id_db(&path, &text)?;
        }
        Ok(host)
    }

    /// Parse an `/etc/subuid`-format file: `name:start:count` per line (name may be numeric);
    /// `#` comments and blank lines are skipped.
    pub fn add_subid_file(&mut self, path: &Path, text: &str) -> Result<()> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| UsernsError::ParseHostFile {
                path: path.to_owned(),
                line: i + 1,
                reason: format!("{reason} in {line:?} (expected name:start:count)"),
            };
            let mut fields = line.split(':');
            let (Some(name), Some(start), Some(count), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("wrong number of fields"));
            };
            let start: u32 = start.parse().map_err(|_| bad("bad start"))?;
            let count: u64 = count.parse().map_err(|_| bad("bad count"))?;
            // A count reaching past 2^32 reserves everything from start up.
            let count = count.min(u64::from(u32::MAX) + 1 - u64::from(start));
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            let range = IdRange {
                host_start: start,
                count,
            };
            self.reserved.push(Reserved {
                range,
                conflict: Conflict::SubId {
                    file: path.to_owned(),
                    name: name.to_owned(),
                    range,
                },
            });
        }
        Ok(())
    }

    /// Parse an `/etc/passwd`- or `/etc/group`-format file: the third field is the ID. NIS
    /// compatibility lines (`+…`, `-…`), comments and blank lines are skipped.
    pub fn add_id_db(&mut self, path: &Path, text: &str) -> Result<()> {
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with(['#', '+', '-']) {
                continue;
            }
            let mut fields = trimmed.split(':');
            let name = fields.next().unwrap_or_default();
            let id = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            let Some(id) = id else {
                return Err(UsernsError::ParseHostFile {
                    path: path.to_owned(),
                    line: i + 1,
                    reason: format!("no numeric ID in the third field of {trimmed:?}"),
                });
            };
            self.reserved.push(Reserved {
                range: IdRange {
                    host_start: id,
                    count: 1,
                },
                conflict: Conflict::HostId {
                    file: path.to_owned(),
                    name: name.to_owned(),
                    id,
                },
            });
        }
        Ok(())
    }

    pub(super) fn conflict(&self, range: &IdRange) -> Option<&Conflict> {
        self.reserved
            .iter()
            .find(|r| r.range.overlaps(range))
            .map(|r| &r.conflict)
    }
}
