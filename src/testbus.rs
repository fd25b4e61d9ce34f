//! For unit tests: a private dbus-daemon (session type, permissive policy) to serve and call
//! interfaces on without root or a system bus.

use std::process::{Child, Command, Stdio};

/// A private bus: a dbus-daemon with a permissive policy, killed on drop.
pub struct Bus {
    daemon: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

pub fn bus() -> Bus {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bus.conf");
    let sock = dir.path().join("bus");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>"#,
            sock.display()
        ),
    )
    .unwrap();
    let mut daemon = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon (package dbus-daemon) is needed for the bus tests");
    // It prints its address once it listens.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(daemon.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("unix:"), "dbus-daemon said {line:?}");
    Bus {
        daemon,
        address: line.trim().to_string(),
        _dir: dir,
    }
}
