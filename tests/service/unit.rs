//! The systemd unit as systemd reads it (`systemd-analyze verify`), and its capability
//! set shown to be enough, with CAP_SYS_PTRACE needed.

use std::time::Duration;

use harness::*;
use nix::sys::signal::Signal;

use super::{have, in_private_mounts};

#[test]
fn the_unit_verifies_clean_and_says_what_the_daemon_needs() {
    let test = test_name!();
    if !root_or_skip(test) || !have("systemd-analyze", test) {
        return;
    }
    let unit = repo().join("packaging/imds-proxy.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/imds-proxy run --config /etc/imds-proxy/config.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "Before=docker.service containerd.service",
        "WantedBy=multi-user.target docker.service containerd.service",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_SYS_PTRACE",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RuntimeDirectory=imds-proxy",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("WatchdogSec=")),
        "no WatchdogSec="
    );
    // systemd checks that ExecStart's binary exists: put the built one at
    // /usr/bin/imds-proxy, seen by this check only (an overlay in a private mount
    // namespace), never installed on the host.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(bin(), dir.path().join("imds-proxy")).unwrap();
    let (ok, out, err) = in_private_mounts(&format!(
        "mount -t overlay overlay -o lowerdir={}:/usr/bin /usr/bin
         systemd-analyze verify --man=no {}",
        dir.path().display(),
        unit.display()
    ));
    assert!(ok, "systemd-analyze verify failed:\n{out}{err}");
    assert_eq!(
        format!("{out}{err}").trim(),
        "",
        "systemd-analyze verify is not clean"
    );
}

/// The unit's `CapabilityBoundingSet=`, as setpriv names capabilities
/// (`CAP_NET_ADMIN` -> `net_admin`).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(repo().join("packaging/imds-proxy.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// `setpriv` that leaves the command only these capabilities (root keeps its bounding
/// set across exec; nothing inheritable or ambient), as systemd's
/// `CapabilityBoundingSet=` does.
fn bounded(caps: &[String]) -> Vec<String> {
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all{set}"),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

#[test]
fn the_units_capabilities_are_enough_and_sys_ptrace_is_needed() {
    let test = test_name!();
    if !root_or_skip(test) || !have("setpriv", test) {
        return;
    }
    let caps = unit_capabilities();
    // The daemon bounded as the unit bounds it installs its tables, serves a container
    // through the proxy and stops cleanly.
    let tb = Testbed::new();
    let wrapper = bounded(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let d = Daemon::spawn_wrapped(
        &tb.host,
        &wrapper,
        &[
            "run",
            "--upstream",
            "http://169.254.169.254",
            "--bridges",
            "br0",
            "--docker-socket",
            "/nonexistent/docker.sock",
            "--unknown-policy",
            "allow",
        ],
        &[],
    );
    d.wait_for("interception live", Duration::from_secs(15));
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_owned();
    // CAP_NET_BIND_SERVICE 10, CAP_NET_ADMIN 12, CAP_SYS_PTRACE 19.
    assert_eq!(
        bnd, "0000000000081400",
        "the daemon ran with other capabilities"
    );
    assert_eq!(tb.status("/latest/meta-data/"), 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), "10.99.0.1");
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    assert!(
        tb.host.nft_table().is_some(),
        "the table went with the daemon"
    );

    // A container's process holds capabilities the daemon lacks: its namespace opens
    // only with CAP_SYS_PTRACE (the kernel's ptrace access check on /proc/<pid>/ns).
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let ns = format!("/proc/{}/ns/net", other.id());
    let read_ns = |caps: &[String]| {
        let mut argv = bounded(caps);
        argv.extend(["readlink".into(), ns.clone()]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        try_cmd(&argv).0
    };
    let without: Vec<String> = caps
        .iter()
        .filter(|c| *c != "sys_ptrace")
        .cloned()
        .collect();
    let (with_ptrace, without_ptrace) = (read_ns(&caps), read_ns(&without));
    let _ = other.kill();
    let _ = other.wait();
    assert!(with_ptrace, "the unit's capabilities cannot open {ns}");
    assert!(
        !without_ptrace,
        "{ns} opened without CAP_SYS_PTRACE: the unit could drop it"
    );
}
