//! The stored form of a container: what `create` records in
//! `/var/lib/berth/containers/NAME/container.toml`, as the user gave it. [`super::validate`]
//! turns it into a checked [`super::ContainerSpec`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::limits::Resources;
use crate::image::ImageConfig;

/// A container definition, stored as `/var/lib/berth/containers/NAME/container.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The container's name (also its hostname unless `hostname` is set).
    pub name: String,
    /// Image name, resolved in the image directories at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The ID (`sha256:…`, its config digest) of the stored image `image` named when the
    /// container was created: the container keeps running that image when the tag moves.
    /// Set by berthd, never by the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// A root directory used as the read-only lower layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<PathBuf>,
    /// The payload's arguments; empty means the image's `Cmd` (or `/bin/sh`).
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's `Entrypoint` (and then its `Cmd` too, as docker does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` environment, over the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory; defaults to the image's, else `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// User (`name`, `uid`, `name:group`, `uid:gid`); defaults to the image's, else root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Hostname inside the container; defaults to the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Remove the definition and writable layer when the container exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// Resource limits and extra devices (see [`Resources`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// How the container is confined (user namespace, capabilities, seccomp, label, rlimits).
    #[serde(default, skip_serializing_if = "Security::is_default")]
    pub security: Security,
    /// `KEY=VALUE` labels (`--label`), shown by `ps`, `inspect` and the `Labels` property and
    /// matched by `ps --filter label=`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How the container is networked (mode, published ports, addresses, interfaces).
    #[serde(
        default,
        skip_serializing_if = "super::network::NetworkSettings::is_default"
    )]
    pub network: super::network::NetworkSettings,
    /// Readiness and restart policy (`--notify-ready`, `--restart`; see [`super::lifecycle`]).
    #[serde(
        default,
        skip_serializing_if = "super::lifecycle::Lifecycle::is_default"
    )]
    pub lifecycle: super::lifecycle::Lifecycle,
    /// `-v/--volume` entries as given: `HOST:CONTAINER[:OPTIONS]`, `NAME:CONTAINER[:OPTIONS]`
    /// (a named volume) or `CONTAINER` (an anonymous one); see [`crate::volume::mounts`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `--mount` entries as given (docker's `type=bind|volume|tmpfs,…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    /// `--tmpfs` entries as given (`PATH[:OPTIONS]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// A read-only root file system, with a writable /run and /tmp.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// The writable layer is discarded when the container exits (nspawn's
    /// `--volatile=overlay`): every start begins from the image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    /// `--boot`: run the image's init as PID 1, an OS container as `systemd-nspawn -b` boots
    /// one ([`crate::boot`]); `command` then holds the init's arguments (or the init itself,
    /// when its first word is a path). Only with a user namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot_init: bool,
    /// Where stdout and stderr go when the starter passes none: `journald` (default),
    /// `none`, or `passthrough` (the starter's own descriptors, /dev/null without them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<String>,
    /// Raw scope properties (`KEY=VALUE` as the user wrote them; see [`super::props`]).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Creation time, microseconds since the epoch.
    pub created_at: u64,
    /// Made from `/etc/berth/containers/NAME.toml` (set by berthd): a reload after the file
    /// is deleted removes the container, as quadlet's units go with their files.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub declared: bool,
}

impl Definition {
    /// The hostname the container gets.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.name)
    }

    /// The payload's argv with the image's config: entrypoint, then command; the command
    /// replaces the image's `Cmd`, an entrypoint replaces the image's `Entrypoint` and `Cmd`.
    pub fn argv(&self, image: Option<&ImageConfig>) -> Vec<String> {
        let empty = ImageConfig::default();
        let image = image.unwrap_or(&empty);
        let entrypoint = self.entrypoint.as_ref().unwrap_or(&image.entrypoint);
        let cmd = if self.command.is_empty() && self.entrypoint.is_none() {
            &image.cmd
        } else {
            &self.command
        };
        let argv: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
        if argv.is_empty() {
            vec!["/bin/sh".into()]
        } else {
            argv
        }
    }
}

fn is_default(r: &Resources) -> bool {
    r.is_empty()
}

/// The `[security]` table: what confines the container, as the user wrote it (checked by
/// [`super::validate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Security {
    /// `auto` (default: a private user namespace with its own 65536 IDs), `UID:COUNT`, or
    /// `host` (no user namespace: container root is host root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<String>,
    /// Capabilities added to the default set (`NET_ADMIN`, `CAP_SYS_PTRACE`, `all`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it (`all` for none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Set no_new_privs: setuid bits and file capabilities no longer raise privileges.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    /// Resource limits of the payload, `NAME=SOFT[:HARD]` (`nofile=1024:4096`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<String>,
    /// `seccomp=unconfined`, `seccomp=/path/profile.json`, `label=disable`,
    /// `label=level:s0:c1,c2`, `label=type:T`, `unsafe-caps`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
}

impl Security {
    fn is_default(&self) -> bool {
        *self == Security::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_round_trips_and_rejects_unknown_keys() {
        let d = Definition {
            name: "web".into(),
            image: Some("default".into()),
            directory: None,
            command: vec!["/bin/true".into()],
            entrypoint: None,
            env: vec![],
            workdir: None,
            user: None,
            hostname: None,
            auto_remove: true,
            resources: Resources::default(),
            properties: [("TasksMax".to_string(), "10".to_string())].into(),
            created_at: 1,
            ..Default::default()
        };
        let s = toml::to_string(&d).unwrap();
        assert_eq!(toml::from_str::<Definition>(&s).unwrap(), d);
        assert!(toml::from_str::<Definition>("name='x'\ncreated_at=1\nbogus=1").is_err());
        assert_eq!(d.hostname(), "web");
    }

    #[test]
    fn argv_follows_the_image_config_like_docker() {
        let img = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            ..Default::default()
        };
        let mut d: Definition = toml::from_str("name='x'\ncreated_at=1").unwrap();
        assert_eq!(d.argv(None), ["/bin/sh"]);
        assert_eq!(d.argv(Some(&img)), ["/entry", "serve", "--port=80"]);
        d.command = vec!["debug".into()];
        assert_eq!(d.argv(Some(&img)), ["/entry", "debug"]);
        d.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
        assert_eq!(d.argv(Some(&img)), ["/bin/sh", "-c", "debug"]);
        d.command.clear();
        assert_eq!(d.argv(Some(&img)), ["/bin/sh", "-c"]);
    }
}
