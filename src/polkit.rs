//! Who may call what: polkit checks for berthd's mutating D-Bus methods.
//!
//! Three actions (`policy/org.berth.berth1.policy`), each `auth_admin_keep` by default, so an
//! administrator authenticates once and keeps the right for a few minutes:
//! - [`Action::ManageContainers`]: create, start, stop, kill, remove, change containers;
//! - [`Action::ManageImages`]: pull, import, remove, tag images;
//! - [`Action::Shell`]: exec a command or log in inside a container.
//!
//! [`authorize`] follows systemd's `bus_verify_polkit_async` (src/shared/bus-polkit.c): a caller
//! whose connection belongs to UID 0 is allowed without asking; anyone else is checked with
//! `org.freedesktop.PolicyKit1.Authority.CheckAuthorization` on the subject
//! `("system-bus-name", {"name": <unique name>})`, which polkit resolves to the caller's process
//! and session itself (no PID races). `AllowUserInteraction` is passed only when the caller's
//! message carried `ALLOW_INTERACTIVE_AUTHORIZATION` ([`interactive_allowed`]). Anything that
//! goes wrong while identifying the caller or asking polkit denies: there is no fallback to
//! "allow".

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use zbus::Variant;
use zbus::message::{Flags, Header};
use zbus::names::{BusName, UniqueName};
use zbus::proxy;

/// A polkit action of berth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ManageContainers,
    ManageImages,
    Shell,
}

impl Action {
    pub const ALL: [Action; 3] = [
        Action::ManageContainers,
        Action::ManageImages,
        Action::Shell,
    ];

    /// The action ID, as in the policy file.
    pub fn id(self) -> &'static str {
        match self {
            Action::ManageContainers => "org.berth.berth1.manage-containers",
            Action::ManageImages => "org.berth.berth1.manage-images",
            Action::Shell => "org.berth.berth1.shell",
        }
    }

    /// What the action permits, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Action::ManageContainers => "managing containers",
            Action::ManageImages => "managing images",
            Action::Shell => "running a shell or command in a container",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Whether the caller of this method call said it can wait for interactive authentication
/// (the `ALLOW_INTERACTIVE_AUTHORIZATION` header flag; `busctl` sets it by default,
/// `--no-ask-password` style options clear it). zbus 6: `Flags::ALLOW_INTERACTIVE_AUTH`.
pub fn interactive_allowed(hdr: &Header<'_>) -> bool {
    hdr.primary()
        .flags()
        .contains(Flags::ALLOW_INTERACTIVE_AUTH)
}

/// `CheckAuthorizationFlags.AllowUserInteraction`.
const ALLOW_USER_INTERACTION: u32 = 0x1;

#[proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
pub trait PolkitAuthority {
    /// `CheckAuthorization(in (sa{sv}) subject, in s action_id, in a{ss} details, in u flags,
    /// in s cancellation_id, out (bba{ss}) result)`.
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Variant<'_>>),
        action_id: &str,
        details: &HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// One question to polkit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The caller's unique bus name (the `system-bus-name` subject).
    pub bus_name: String,
    pub action: Action,
    pub details: Vec<(String, String)>,
    pub interactive: bool,
}

/// polkit's answer: `(is_authorized, is_challenge, details)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub is_authorized: bool,
    pub is_challenge: bool,
    pub details: HashMap<String, String>,
}

/// What [`authorize_with`] needs from the bus: the real one is [`BusAuthority`]; tests use a
/// fake.
pub trait Authority {
    /// The UID owning the connection `sender` (`org.freedesktop.DBus.GetConnectionUnixUser`).
    fn caller_uid(&self, sender: &str) -> impl Future<Output = Result<u32, String>> + Send;
    /// Ask polkit.
    fn check(&self, query: &Query) -> impl Future<Output = Result<Answer, String>> + Send;
}

/// Non-interactive checks answer at once; interactive ones wait for a person to type a
/// password, so they get longer (then the caller's own D-Bus timeout usually ends first).
const CHECK_TIMEOUT: Duration = Duration::from_secs(25);
const INTERACTIVE_CHECK_TIMEOUT: Duration = Duration::from_secs(300);

/// The real authority: the bus driver and polkitd over `conn`.
#[derive(Clone)]
pub struct BusAuthority {
    dbus: zbus::fdo::DBusProxy<'static>,
    polkit: PolkitAuthorityProxy<'static>,
}

impl BusAuthority {
    /// Proxies without property caching (which would cost a GetAll round trip and a match
    /// rule each); build once and keep.
    pub async fn new(conn: &zbus::Connection) -> zbus::Result<BusAuthority> {
        use zbus::proxy::CacheProperties;
        Ok(BusAuthority {
            dbus: zbus::fdo::DBusProxy::builder(conn)
                .cache_properties(CacheProperties::No)
                .build()
                .await?,
            polkit: PolkitAuthorityProxy::builder(conn)
                .cache_properties(CacheProperties::No)
                .build()
                .await?,
        })
    }
}

impl BusAuthority {
    /// The groups of the process owning the connection `sender`
    /// (`org.freedesktop.DBus.GetConnectionCredentials`, `UnixGroupIDs`).
    pub async fn caller_groups(&self, sender: &str) -> Result<Vec<u32>, String> {
        let name = BusName::try_from(sender).map_err(|e| e.to_string())?;
        let creds = self
            .dbus
            .get_connection_credentials(name)
            .await
            .map_err(|e| e.to_string())?;
        creds
            .unix_group_ids()
            .cloned()
            .ok_or_else(|| "the bus does not say the caller's groups".to_string())
    }
}

impl Authority for BusAuthority {
    async fn caller_uid(&self, sender: &str) -> Result<u32, String> {
        let name = BusName::try_from(sender).map_err(|e| e.to_string())?;
        self.dbus
            .get_connection_unix_user(name)
            .await
            .map_err(|e| e.to_string())
    }

    async fn check(&self, query: &Query) -> Result<Answer, String> {
        let subject = (
            "system-bus-name",
            HashMap::from([("name", Variant::from(query.bus_name.as_str()))]),
        );
        let details: HashMap<&str, &str> = query
            .details
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let flags = if query.interactive {
            ALLOW_USER_INTERACTION
        } else {
            0
        };
        let limit = if query.interactive {
            INTERACTIVE_CHECK_TIMEOUT
        } else {
            CHECK_TIMEOUT
        };
        let call =
            self.polkit
                .check_authorization(&subject, query.action.id(), &details, flags, "");
        match tokio::time::timeout(limit, call).await {
            Err(_) => Err(format!("polkit did not answer within {limit:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok((is_authorized, is_challenge, details))) => Ok(Answer {
                is_authorized,
                is_challenge,
                details,
            }),
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// polkit said no.
    NotAuthorized,
    /// polkit would say yes after authentication, but the caller did not allow interaction.
    InteractiveAuthRequired,
    /// The caller allowed interaction, yet polkit still answered "challenge": no
    /// authentication agent is registered for the caller's session (real polkitd 122 does this).
    NoAuthAgent,
    /// The user was asked and dismissed the authentication dialog.
    Dismissed,
    /// The caller could not be identified or polkit could not be asked (unreachable, error,
    /// timeout): denied, never allowed.
    CheckFailed(String),
}

/// A refused call. Its message says what was refused and how to get the right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub action: Action,
    pub reason: DenyReason,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = format!(
            "be root, or be granted the polkit action {} (see policy/org.berth.berth1.policy)",
            self.action.id()
        );
        let what = self.action.what();
        match &self.reason {
            DenyReason::NotAuthorized => {
                write!(
                    f,
                    "access denied: {what} is not permitted to this caller; {how}"
                )
            }
            DenyReason::InteractiveAuthRequired => write!(
                f,
                "interactive authentication required for {what}: call again allowing \
                 interactive authorization (a polkit agent asks for the password), or {how}"
            ),
            DenyReason::NoAuthAgent => write!(
                f,
                "interactive authentication required for {what}, but no polkit authentication \
                 agent is running for the caller (start one, e.g. `pkttyagent --process PID`), \
                 or {how}"
            ),
            DenyReason::Dismissed => {
                write!(
                    f,
                    "access denied: authentication for {what} was dismissed; {how}"
                )
            }
            DenyReason::CheckFailed(why) => write!(
                f,
                "access denied: could not check authorization for {what} ({why}); {how}"
            ),
        }
    }
}

impl std::error::Error for Denied {}

impl Denied {
    /// The D-Bus error to answer with: the standard names systemd uses, so clients (busctl,
    /// systemctl-style tools) recognise "retry interactively".
    pub fn dbus_error_name(&self) -> &'static str {
        match self.reason {
            DenyReason::InteractiveAuthRequired | DenyReason::NoAuthAgent => {
                "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
            }
            _ => "org.freedesktop.DBus.Error.AccessDenied",
        }
    }
}

impl From<Denied> for zbus::fdo::Error {
    fn from(d: Denied) -> Self {
        match d.reason {
            DenyReason::InteractiveAuthRequired | DenyReason::NoAuthAgent => {
                zbus::fdo::Error::InteractiveAuthorizationRequired(d.to_string())
            }
            _ => zbus::fdo::Error::AccessDenied(d.to_string()),
        }
    }
}

/// May `sender` perform `action`? Root is allowed without asking; otherwise polkit decides.
/// `details` are shown by polkit agents and visible to polkit rules (`action.lookup("name")`),
/// e.g. `[("name", "web")]`; keys starting with `polkit.` are reserved to polkit and dropped.
/// `interactive` comes from [`interactive_allowed`] on the caller's message.
pub async fn authorize(
    conn: &zbus::Connection,
    sender: &UniqueName<'_>,
    action: Action,
    details: &[(&str, &str)],
    interactive: bool,
) -> Result<(), Denied> {
    let authority = BusAuthority::new(conn).await.map_err(|e| Denied {
        action,
        reason: DenyReason::CheckFailed(format!("connecting to polkit: {e}")),
    })?;
    authorize_with(&authority, sender.as_str(), action, details, interactive).await
}

/// [`authorize`] with a given authority (berthd keeps one [`BusAuthority`]; tests pass a fake).
pub async fn authorize_with<A: Authority>(
    authority: &A,
    sender: &str,
    action: Action,
    details: &[(&str, &str)],
    interactive: bool,
) -> Result<(), Denied> {
    let deny = |reason| Denied { action, reason };
    let uid = authority.caller_uid(sender).await.map_err(|e| {
        deny(DenyReason::CheckFailed(format!(
            "could not identify the caller {sender}: {e}"
        )))
    })?;
    if uid == 0 {
        return Ok(());
    }
    let query = Query {
        bus_name: sender.to_owned(),
        action,
        details: details
            .iter()
            .filter(|(k, _)| !k.starts_with("polkit."))
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        interactive,
    };
    let answer = authority
        .check(&query)
        .await
        .map_err(|e| deny(DenyReason::CheckFailed(format!("asking polkit: {e}"))))?;
    if answer.is_authorized {
        Ok(())
    } else if answer.is_challenge && interactive {
        Err(deny(DenyReason::NoAuthAgent))
    } else if answer.is_challenge {
        Err(deny(DenyReason::InteractiveAuthRequired))
    } else if answer.details.get("polkit.dismissed").map(String::as_str) == Some("true") {
        Err(deny(DenyReason::Dismissed))
    } else {
        Err(deny(DenyReason::NotAuthorized))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A scripted authority that records what it was asked.
    #[derive(Default)]
    struct Fake {
        uid: Option<u32>,
        answer: Option<Answer>,
        asked: Mutex<Vec<Query>>,
    }

    impl Authority for Fake {
        async fn caller_uid(&self, sender: &str) -> Result<u32, String> {
            self.uid
                .ok_or_else(|| format!("name {sender} has no owner"))
        }
        async fn check(&self, query: &Query) -> Result<Answer, String> {
            self.asked.lock().unwrap().push(query.clone());
            self.answer
                .clone()
                .ok_or_else(|| "org.freedesktop.DBus.Error.ServiceUnknown".to_string())
        }
    }

    fn answer(is_authorized: bool, is_challenge: bool) -> Option<Answer> {
        Some(Answer {
            is_authorized,
            is_challenge,
            details: HashMap::new(),
        })
    }

    async fn run(fake: &Fake, action: Action, interactive: bool) -> Result<(), Denied> {
        tokio::time::timeout(
            Duration::from_secs(5),
            authorize_with(fake, ":1.42", action, &[("name", "web")], interactive),
        )
        .await
        .expect("authorize_with finished")
    }

    #[tokio::test]
    async fn root_is_allowed_without_asking_polkit() {
        let fake = Fake {
            uid: Some(0),
            answer: answer(false, false),
            ..Fake::default()
        };
        assert_eq!(run(&fake, Action::ManageContainers, false).await, Ok(()));
        assert!(fake.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn polkit_yes_allows_and_gets_the_query() {
        let fake = Fake {
            uid: Some(1000),
            answer: answer(true, false),
            ..Fake::default()
        };
        assert_eq!(run(&fake, Action::Shell, true).await, Ok(()));
        let asked = fake.asked.lock().unwrap();
        assert_eq!(
            asked[..],
            [Query {
                bus_name: ":1.42".into(),
                action: Action::Shell,
                details: vec![("name".into(), "web".into())],
                interactive: true,
            }]
        );
    }

    #[tokio::test]
    async fn polkit_no_denies_with_a_helpful_message() {
        let fake = Fake {
            uid: Some(1000),
            answer: answer(false, false),
            ..Fake::default()
        };
        let d = run(&fake, Action::ManageImages, false).await.unwrap_err();
        assert_eq!(d.reason, DenyReason::NotAuthorized);
        let msg = d.to_string();
        assert!(msg.contains("managing images"), "{msg}");
        assert!(msg.contains("be root"), "{msg}");
        assert!(msg.contains("org.berth.berth1.manage-images"), "{msg}");
        assert_eq!(
            d.dbus_error_name(),
            "org.freedesktop.DBus.Error.AccessDenied"
        );
        assert!(matches!(
            zbus::fdo::Error::from(d),
            zbus::fdo::Error::AccessDenied(_)
        ));
    }

    #[tokio::test]
    async fn challenge_without_authorization_is_denied() {
        let fake = Fake {
            uid: Some(1000),
            answer: answer(false, true),
            ..Fake::default()
        };
        let d = run(&fake, Action::ManageContainers, false)
            .await
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InteractiveAuthRequired);
        assert!(
            d.to_string()
                .contains("interactive authentication required")
        );
        assert_eq!(
            d.dbus_error_name(),
            "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
        );
        assert!(!fake.asked.lock().unwrap()[0].interactive);
    }

    #[tokio::test]
    async fn challenge_despite_interaction_means_no_agent() {
        let fake = Fake {
            uid: Some(1000),
            answer: answer(false, true),
            ..Fake::default()
        };
        let d = run(&fake, Action::Shell, true).await.unwrap_err();
        assert_eq!(d.reason, DenyReason::NoAuthAgent);
        assert!(
            d.to_string().contains("no polkit authentication agent"),
            "{d}"
        );
        assert!(matches!(
            zbus::fdo::Error::from(d),
            zbus::fdo::Error::InteractiveAuthorizationRequired(_)
        ));
    }

    #[tokio::test]
    async fn dismissed_dialog_is_denied() {
        let fake = Fake {
            uid: Some(1000),
            answer: Some(Answer {
                is_authorized: false,
                is_challenge: false,
                details: HashMap::from([("polkit.dismissed".into(), "true".into())]),
            }),
            ..Fake::default()
        };
        let d = run(&fake, Action::Shell, true).await.unwrap_err();
        assert_eq!(d.reason, DenyReason::Dismissed);
    }

    #[tokio::test]
    async fn any_error_is_a_denial() {
        // The caller cannot be identified: polkit is not even asked.
        let fake = Fake {
            uid: None,
            answer: answer(true, false),
            ..Fake::default()
        };
        let d = run(&fake, Action::ManageContainers, false)
            .await
            .unwrap_err();
        assert!(matches!(&d.reason, DenyReason::CheckFailed(m) if m.contains(":1.42")));
        assert!(fake.asked.lock().unwrap().is_empty());
        // polkit cannot be asked.
        let fake = Fake {
            uid: Some(1000),
            answer: None,
            ..Fake::default()
        };
        let d = run(&fake, Action::ManageContainers, false)
            .await
            .unwrap_err();
        assert!(matches!(&d.reason, DenyReason::CheckFailed(m) if m.contains("ServiceUnknown")));
        assert!(d.to_string().starts_with("access denied: could not check"));
    }

    #[tokio::test]
    async fn reserved_detail_keys_are_not_passed() {
        let fake = Fake {
            uid: Some(1000),
            answer: answer(true, false),
            ..Fake::default()
        };
        tokio::time::timeout(
            Duration::from_secs(5),
            authorize_with(
                &fake,
                ":1.7",
                Action::ManageContainers,
                &[
                    ("polkit.message", "trust me"),
                    ("name", "db"),
                    ("verb", "start"),
                ],
                false,
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            fake.asked.lock().unwrap()[0].details,
            [
                ("name".to_string(), "db".to_string()),
                ("verb".into(), "start".into())
            ]
        );
    }

    #[test]
    fn action_ids_match_the_policy_file() {
        let xml = include_str!("../policy/org.berth.berth1.policy");
        for a in Action::ALL {
            assert!(
                xml.contains(&format!("<action id=\"{}\">", a.id())),
                "{a} missing from the policy file"
            );
        }
        assert_eq!(xml.matches("<action id=").count(), Action::ALL.len());
        assert_eq!(
            xml.matches("<allow_active>auth_admin_keep</allow_active>")
                .count(),
            3
        );
        assert_eq!(
            xml.matches("<allow_inactive>auth_admin_keep</allow_inactive>")
                .count(),
            3
        );
        assert_eq!(
            xml.matches("<allow_any>auth_admin_keep</allow_any>")
                .count(),
            3
        );
    }

    #[test]
    fn interactive_flag_is_read_from_the_header() {
        let with = zbus::Message::method_call("/org/berth/berth1", "Start")
            .with_flags(Flags::ALLOW_INTERACTIVE_AUTH)
            .build(&())
            .unwrap();
        assert!(interactive_allowed(&with.header()));
        let without = zbus::Message::method_call("/org/berth/berth1", "Start")
            .build(&())
            .unwrap();
        assert!(!interactive_allowed(&without.header()));
    }

    // ---- The real zbus side, on a private dbus-daemon (no host bus is touched). ----

    struct PrivateBus {
        daemon: std::process::Child,
        address: String,
        _dir: tempfile::TempDir,
    }

    impl PrivateBus {
        fn start() -> PrivateBus {
            use std::io::BufRead;
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            // Other users (the test's unprivileged client) must reach the socket.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let socket = dir.path().join("bus");
            let config = dir.path().join("bus.conf");
            std::fs::write(
                &config,
                format!(
                    r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                    socket.display()
                ),
            )
            .unwrap();
            let mut daemon = std::process::Command::new("dbus-daemon")
                .arg(format!("--config-file={}", config.display()))
                .args(["--nofork", "--nopidfile", "--print-address=1", "--nosyslog"])
                .stdout(std::process::Stdio::piped())
                // It warns that it may not raise its fd limit; nothing to see.
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("dbus-daemon (package dbus-daemon/dbus-bin) must be installed");
            let mut line = String::new();
            std::io::BufReader::new(daemon.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.starts_with("unix:"), "dbus-daemon said {line:?}");
            PrivateBus {
                daemon,
                address: line.trim().to_owned(),
                _dir: dir,
            }
        }

        async fn connect(&self) -> zbus::Connection {
            zbus::connection::Builder::address(self.address.as_str())
                .build()
                .await
                .unwrap()
        }
    }

    impl Drop for PrivateBus {
        fn drop(&mut self) {
            if self.daemon.kill().is_ok() {
                let _reaped = self.daemon.wait();
            }
        }
    }

    type Seen = Arc<Mutex<Vec<(String, String, String, HashMap<String, String>, u32)>>>;

    /// Stands in for polkitd: says yes to `manage-images`, challenge to the rest.
    struct FakePolkitd {
        seen: Seen,
    }

    #[zbus::interface(name = "org.freedesktop.PolicyKit1.Authority")]
    impl FakePolkitd {
        async fn check_authorization(
            &self,
            subject: (String, HashMap<String, zbus::OwnedVariant>),
            action_id: String,
            details: HashMap<String, String>,
            flags: u32,
            _cancellation_id: String,
        ) -> (bool, bool, HashMap<String, String>) {
            let name: String = subject
                .1
                .get("name")
                .and_then(|v| v.try_clone().ok())
                .and_then(|v| String::try_from(v).ok())
                .unwrap_or_default();
            let yes = action_id == Action::ManageImages.id();
            self.seen
                .lock()
                .unwrap()
                .push((subject.0, name, action_id, details, flags));
            (yes, !yes, HashMap::new())
        }
    }

    /// A service method guarded like berthd's, for a real client to call.
    struct Guarded;

    #[zbus::interface(name = "org.berth.Test")]
    impl Guarded {
        async fn do_it(
            &self,
            action: String,
            #[zbus(header)] hdr: Header<'_>,
            #[zbus(connection)] conn: &zbus::Connection,
        ) -> zbus::fdo::Result<String> {
            let action = Action::ALL
                .into_iter()
                .find(|a| a.id() == action)
                .ok_or_else(|| zbus::fdo::Error::InvalidArgs(action.clone()))?;
            let sender = hdr
                .sender()
                .ok_or_else(|| zbus::fdo::Error::Failed("no sender".into()))?;
            authorize(
                conn,
                sender,
                action,
                &[("name", "web")],
                interactive_allowed(&hdr),
            )
            .await?;
            Ok(format!("allowed interactive={}", interactive_allowed(&hdr)))
        }
    }

    /// `busctl call` as user `uid` (setpriv), returning (success, stdout+stderr).
    fn busctl_as(uid: u32, address: &str, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "busctl",
                &format!("--address={address}"),
            ])
            .args(args)
            .output()
            .expect("setpriv and busctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// End to end over a real bus: a root caller passes without polkit; an unprivileged
    /// caller's unique name, action, details and interactive flag reach "polkit" exactly as
    /// CheckAuthorization expects them, and its answer decides.
    #[tokio::test]
    async fn real_bus_root_shortcut_and_polkit_query() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test must run as root (CI does): it calls as another user"
        );
        let bus = PrivateBus::start();
        let seen: Seen = Arc::default();
        let _polkitd = zbus::connection::Builder::address(bus.address.as_str())
            .name("org.freedesktop.PolicyKit1")
            .serve_at(
                "/org/freedesktop/PolicyKit1/Authority",
                FakePolkitd { seen: seen.clone() },
            )
            .build()
            .await
            .unwrap();
        let _service = zbus::connection::Builder::address(bus.address.as_str())
            .name("org.berth.Test")
            .serve_at("/t", Guarded)
            .build()
            .await
            .unwrap();

        let test = async {
            // BusAuthority against the real bus driver: our own connection is root's.
            let me = bus.connect().await;
            let authority = BusAuthority::new(&me).await.unwrap();
            let own = me.unique_name().unwrap().to_string();
            assert_eq!(authority.caller_uid(&own).await, Ok(0));
            assert!(authority.caller_uid(":1.999999").await.is_err());

            let call = |uid: u32, interactive: &'static str, action: Action| {
                let address = bus.address.clone();
                tokio::task::spawn_blocking(move || {
                    busctl_as(
                        uid,
                        &address,
                        &[
                            &format!("--allow-interactive-authorization={interactive}"),
                            "call",
                            "org.berth.Test",
                            "/t",
                            "org.berth.Test",
                            "DoIt",
                            "s",
                            action.id(),
                        ],
                    )
                })
            };
            // Root: allowed, polkit not asked.
            let (ok, out) = call(0, "yes", Action::Shell).await.unwrap();
            assert!(ok, "{out}");
            assert!(out.contains("allowed interactive=true"), "{out}");
            assert!(seen.lock().unwrap().is_empty());

            // nobody, polkit says yes.
            let (ok, out) = call(65534, "no", Action::ManageImages).await.unwrap();
            assert!(ok, "{out}");
            assert!(out.contains("allowed interactive=false"), "{out}");

            // nobody, polkit says "challenge": denied with the standard error name.
            let (ok, out) = call(65534, "yes", Action::ManageContainers).await.unwrap();
            assert!(!ok);
            assert!(out.contains("interactive authentication required"), "{out}");
            assert!(out.contains("no polkit authentication agent"), "{out}");

            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 2);
            for (subject, name, _, details, _) in seen.iter() {
                assert_eq!(subject, "system-bus-name");
                assert!(name.starts_with(":1."), "{name}");
                assert_eq!(details.get("name").map(String::as_str), Some("web"));
            }
            assert_eq!(seen[0].2, Action::ManageImages.id());
            assert_eq!(
                seen[0].4, 0,
                "no interaction when the caller did not allow it"
            );
            assert_eq!(seen[1].2, Action::ManageContainers.id());
            assert_eq!(seen[1].4, ALLOW_USER_INTERACTION);
        };
        tokio::time::timeout(Duration::from_secs(60), test)
            .await
            .expect("test finished in time");
    }
}
