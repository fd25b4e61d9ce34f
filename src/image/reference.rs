//! Local image names: what a user may write for an image (`web`, `uxweb:1.0`,
//! `registry:5000/team/app:1.2`, `app@sha256:…`, an image ID or a prefix of one), the key a
//! tag is stored under, and how a tag is shown.
//!
//! Names follow docker's model, parsed by the same grammar as pulls ([`Reference`]): a name
//! without a registry is a Docker Hub name (`web` is `docker.io/library/web:latest`), so a
//! pulled `alpine` and `docker tag`-style local names share one namespace, and every image
//! berth had before tags (`web`) is still `web`. A tag is stored under its canonical full form
//! and shown in the familiar one: `docker.io/library/` and `:latest` are left out (`web`,
//! `uxweb:1.0`, `127.0.0.1:5000/test/a:1`). podman's `localhost/web` is accepted for `web`.
//!
//! Names of images made before tags existed that are not valid references (upper case, `..`)
//! are kept verbatim as *legacy* names: they still resolve, exactly as written.
//!
//! An image ID is the digest of its config (as docker and podman show it); `sha256:<hex>`, the
//! 64 hex digits, or a unique prefix of at least 12 of them name an image by ID.

use std::fmt;

use super::ErrorKind;
use super::digest::Digest;
use super::registry::{Reference, RegistryError};

/// The shortest ID prefix accepted (what `images` shows).
pub const MIN_ID_PREFIX: usize = 12;

/// A tag: `registry/repository:tag`, canonical (docker normalization), or a legacy name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagName(String);

impl TagName {
    /// The key the tag is stored under.
    pub fn key(&self) -> &str {
        &self.0
    }

    /// From a stored key (trusted: written by [`TagName::parse`] or the migration).
    pub(crate) fn from_key(key: String) -> TagName {
        TagName(key)
    }

    /// Parse a name a user gives for a new tag: a reference without a digest. `web` →
    /// `docker.io/library/web:latest`.
    pub fn parse(s: &str) -> Result<TagName, ReferenceError> {
        let r: Reference = s.parse().map_err(ReferenceError::Invalid)?;
        if r.digest.is_some() {
            return Err(ReferenceError::DigestInTag(s.to_string()));
        }
        Ok(TagName::of(&r))
    }

    /// The tag a registry reference gives (its digest, if any, is dropped).
    pub fn of(r: &Reference) -> TagName {
        TagName(format!(
            "{}/{}:{}",
            r.registry,
            r.repository,
            r.tag.as_deref().unwrap_or("latest")
        ))
    }

    /// A name kept verbatim from before tags existed (it passed [`crate::name::validate`]).
    pub(crate) fn legacy(name: &str) -> TagName {
        TagName(name.to_string())
    }

    /// Whether this is a legacy verbatim name (no `/`: canonical keys always have one).
    pub fn is_legacy(&self) -> bool {
        !self.0.contains('/')
    }

    /// `registry/repository` (empty for a legacy name).
    pub fn repository(&self) -> &str {
        if self.is_legacy() {
            return "";
        }
        self.0.rsplit_once(':').map_or(&self.0, |(r, _)| r)
    }

    /// The tag part (`latest` for a legacy name).
    pub fn tag(&self) -> &str {
        if self.is_legacy() {
            return "latest";
        }
        self.0.rsplit_once(':').map_or("latest", |(_, t)| t)
    }

    /// The familiar form (see the module docs).
    pub fn display(&self) -> String {
        if self.is_legacy() {
            return self.0.clone();
        }
        let repo = self.repository();
        let repo = repo
            .strip_prefix("docker.io/library/")
            .or_else(|| repo.strip_prefix("docker.io/"))
            .unwrap_or(repo);
        match self.tag() {
            "latest" => repo.to_string(),
            t => format!("{repo}:{t}"),
        }
    }

    /// The registry reference this tag pushes to (None for a legacy name).
    pub fn reference(&self) -> Option<Reference> {
        if self.is_legacy() {
            return None;
        }
        self.0.parse().ok()
    }
}

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// What a user string names, before it is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A tag, with the alternatives to try when it is not there (short-name search).
    Tag {
        tag: TagName,
        /// `path:tag` as written when no registry was given (`web`, `team/app:1`): matched
        /// against the end of every stored repository if the canonical tag is absent.
        short: Option<(String, String)>,
        /// The string as written, tried first as a legacy name.
        raw: String,
    },
    /// `[name]@sha256:…`: the image whose manifest has this digest.
    Digest(Digest),
    /// `sha256:<hex>` or a bare hex prefix: an image ID.
    Id(String),
    /// Not a valid reference, but possibly a legacy name.
    Legacy(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Invalid(RegistryError),
    #[error("{0:?} has a digest; a tag name cannot")]
    DigestInTag(String),
}

impl ReferenceError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether the first component of `s` is a registry (distribution's rule, as in
/// [`Reference`]'s parser).
fn has_registry(s: &str) -> bool {
    match s.split_once('/') {
        Some((first, _)) => {
            first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase())
        }
        None => false,
    }
}

impl ImageRef {
    /// Parse what a user wrote for an existing image.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        if let Some(h) = s.strip_prefix("sha256:")
            && is_hex(h)
            && h.len() <= 64
        {
            if h.len() < MIN_ID_PREFIX {
                return Err(ReferenceError::Invalid(RegistryError::InvalidReference {
                    reference: s.to_string(),
                    reason: "an image ID prefix has at least 12 hex digits",
                }));
            }
            return Ok(ImageRef::Id(h.to_string()));
        }
        let r: Reference = match s.parse() {
            Ok(r) => r,
            Err(e) => {
                // A name made before tags existed may be no valid reference (`Web`).
                return if crate::name::validate(s).is_ok() {
                    Ok(ImageRef::Legacy(s.to_string()))
                } else {
                    Err(ReferenceError::Invalid(e))
                };
            }
        };
        if let Some(d) = r.digest {
            return Ok(ImageRef::Digest(d));
        }
        let short = (!has_registry(s)).then(|| {
            let (path, tag) = match s.rfind(':') {
                Some(i) => (&s[..i], &s[i + 1..]),
                None => (s, "latest"),
            };
            (path.to_string(), tag.to_string())
        });
        // localhost/NAME is podman's spelling of an unqualified local name.
        let (tag, short) = if r.registry == "localhost" && short.is_none() {
            let rest = s.strip_prefix("localhost/").unwrap_or(s);
            let (path, tag) = match rest.rfind(':') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, "latest"),
            };
            (TagName::of(&r), Some((path.to_string(), tag.to_string())))
        } else {
            (TagName::of(&r), short)
        };
        Ok(ImageRef::Tag {
            tag,
            short,
            raw: s.to_string(),
        })
    }

    /// A bare hex string may be an ID prefix as well as a name: the store tries it as a name
    /// first, then as an ID.
    pub fn id_candidate(s: &str) -> Option<&str> {
        (is_hex(s) && s.len() >= MIN_ID_PREFIX && s.len() <= 64).then_some(s)
    }
}

/// The repository's path as written without a registry (`library/` dropped for matching).
pub(crate) fn short_matches(key: &TagName, path: &str, tag: &str) -> bool {
    if key.is_legacy() || key.tag() != tag {
        return false;
    }
    let repo = key.repository();
    let path = path.strip_prefix("library/").unwrap_or(path);
    // Drop the registry, then compare the path's tail component-wise.
    let Some((_, repo_path)) = repo.split_once('/') else {
        return false;
    };
    let repo_path = repo_path.strip_prefix("library/").unwrap_or(repo_path);
    repo_path == path || repo_path.ends_with(&format!("/{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> String {
        TagName::parse(s).unwrap().key().to_string()
    }

    #[test]
    fn tags_are_canonical_and_shown_familiar() {
        assert_eq!(tag("web"), "docker.io/library/web:latest");
        assert_eq!(tag("web:latest"), "docker.io/library/web:latest");
        assert_eq!(tag("uxweb:1.0"), "docker.io/library/uxweb:1.0");
        assert_eq!(
            tag("registry:5000/team/app:1.2"),
            "registry:5000/team/app:1.2"
        );
        assert_eq!(tag("localhost/web"), "localhost/web:latest");
        for (s, shown) in [
            ("web", "web"),
            ("web:latest", "web"),
            ("uxweb:1.0", "uxweb:1.0"),
            ("team/app:2", "team/app:2"),
            ("docker.io/library/alpine:3.20", "alpine:3.20"),
            ("127.0.0.1:5000/test/a:1", "127.0.0.1:5000/test/a:1"),
            ("quay.io/x/y", "quay.io/x/y"),
        ] {
            let t = TagName::parse(s).unwrap();
            assert_eq!(t.display(), shown, "{s}");
            // What is shown parses back to the same tag.
            assert_eq!(TagName::parse(&t.display()).unwrap(), t, "{s}");
        }
        let t = TagName::parse("127.0.0.1:5000/test/a:1").unwrap();
        assert_eq!(t.repository(), "127.0.0.1:5000/test/a");
        assert_eq!(t.tag(), "1");
        assert_eq!(
            t.reference().unwrap().to_string(),
            "127.0.0.1:5000/test/a:1"
        );
        let legacy = TagName::legacy("Web");
        assert!(legacy.is_legacy());
        assert_eq!(legacy.display(), "Web");
        assert!(legacy.reference().is_none());
    }

    #[test]
    fn bad_tag_names_are_refused() {
        for bad in [
            "",
            "Bad Name",
            "a/../b",
            "a:",
            "a:-x",
            "x@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "UPPER",
            "a//b",
        ] {
            let e = TagName::parse(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn user_strings() {
        let d = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            ImageRef::parse(&format!("sha256:{d}")).unwrap(),
            ImageRef::Id(d.into())
        );
        assert_eq!(
            ImageRef::parse("sha256:e3b0c44298fc").unwrap(),
            ImageRef::Id("e3b0c44298fc".into())
        );
        assert!(ImageRef::parse("sha256:e3b0").is_err());
        assert_eq!(
            ImageRef::parse(&format!("app@sha256:{d}")).unwrap(),
            ImageRef::Digest(format!("sha256:{d}").parse().unwrap())
        );
        match ImageRef::parse("web").unwrap() {
            ImageRef::Tag { tag, short, raw } => {
                assert_eq!(tag.key(), "docker.io/library/web:latest");
                assert_eq!(short, Some(("web".into(), "latest".into())));
                assert_eq!(raw, "web");
            }
            other => panic!("{other:?}"),
        }
        match ImageRef::parse("localhost/web:2").unwrap() {
            ImageRef::Tag { short, .. } => assert_eq!(short, Some(("web".into(), "2".into()))),
            other => panic!("{other:?}"),
        }
        match ImageRef::parse("q.io/a/b").unwrap() {
            ImageRef::Tag { short, .. } => assert_eq!(short, None),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ImageRef::parse("Web").unwrap(),
            ImageRef::Legacy("Web".into())
        );
        assert!(ImageRef::parse("bad name").is_err());
        assert!(ImageRef::parse("../x").is_err());
        assert_eq!(ImageRef::id_candidate("e3b0c44298fc"), Some("e3b0c44298fc"));
        assert_eq!(ImageRef::id_candidate("web"), None);
    }

    #[test]
    fn short_names_match_the_end_of_a_repository() {
        let k = |s: &str| TagName::parse(s).unwrap();
        assert!(short_matches(&k("127.0.0.1:5000/test/a:1"), "a", "1"));
        assert!(short_matches(&k("127.0.0.1:5000/test/a:1"), "test/a", "1"));
        assert!(!short_matches(&k("127.0.0.1:5000/test/a:1"), "a", "2"));
        assert!(!short_matches(&k("127.0.0.1:5000/test/ba:1"), "a", "1"));
        assert!(short_matches(&k("localhost/web"), "web", "latest"));
        assert!(short_matches(&k("alpine"), "alpine", "latest"));
        assert!(!short_matches(&TagName::legacy("web"), "web", "latest"));
    }
}
