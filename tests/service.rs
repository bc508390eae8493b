//! The service tier: the daemon under a service manager's protocol (READY=1 once the
//! interception is live, WATCHDOG=1 while it keeps its tables), the systemd unit as
//! systemd reads it, and the Debian package with its maintainer scripts played through
//! install, upgrade, removal and purge. Root: namespaces and private mounts, each
//! removed when the test ends.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use harness::*;
use nix::sys::signal::Signal;

/// A datagram socket standing in for systemd's notify socket: what the daemon sends.
struct NotifySocket {
    path: PathBuf,
    rx: mpsc::Receiver<(Instant, String)>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if tx.send((Instant::now(), msg)).is_err() {
                            return;
                        }
                    }
                    // Timeouts let the thread notice that the test is over.
                    Err(_) => {
                        if tx.send((Instant::now(), String::new())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            path,
            rx,
            _dir: dir,
        }
    }

    /// The next message within `timeout`, if any.
    fn next(&self, timeout: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok((_, m)) if m.is_empty() => continue,
                Ok(m) => return Some(m),
                Err(_) => return None,
            }
        }
    }
}

#[test]
fn ready_comes_once_the_interception_is_live_and_the_watchdog_keeps_being_fed() {
    require_root!();
    let tb = Testbed::new();
    let sock = NotifySocket::new();
    let watchdog = Duration::from_millis(1500);
    let usec = watchdog.as_micros().to_string();
    let d = tb.daemon_unready_env(
        &[],
        &[
            ("NOTIFY_SOCKET", sock.path.to_str().unwrap()),
            ("WATCHDOG_USEC", &usec),
        ],
    );
    let (_, first) = sock
        .next(Duration::from_secs(15))
        .expect("no READY=1 within 15 s");
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "the first message is not READY=1: {first:?}"
    );
    // At READY=1 the interception is already live: the table is there and a
    // container's request goes through the proxy (the fake service sees the host's
    // address, not the container's).
    assert!(tb.host.nft_table().is_some(), "READY=1 before the table");
    assert_eq!(tb.status("/latest/meta-data/"), 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), "10.99.0.1");
    d.wait_for("interception live", Duration::from_secs(2));

    // WATCHDOG=1 keeps arriving, well within WATCHDOG_USEC.
    let mut last = Instant::now();
    let mut fed = 0;
    let mut longest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let (at, msg) = sock
            .next(watchdog)
            .unwrap_or_else(|| panic!("no message within WATCHDOG_USEC ({watchdog:?})"));
        assert_eq!(msg.trim(), "WATCHDOG=1", "unexpected message");
        longest = longest.max(at - last);
        last = at;
        fed += 1;
    }
    assert!(fed >= 4, "only {fed} WATCHDOG=1 in 4 s");
    measure(
        "longest gap between WATCHDOG=1 (ms), WATCHDOG_USEC 1500 ms",
        longest.as_millis(),
    );

    // A stopped (hung) daemon feeds nothing: systemd would restart it, and the table
    // keeps refusing containers meanwhile.
    d.signal(Signal::SIGSTOP);
    while sock.rx.try_recv().is_ok() {}
    assert!(
        sock.next(watchdog).is_none(),
        "a stopped daemon fed the watchdog"
    );
    let r = http(&tb.container, IMDS, "GET", "/latest/meta-data/", &[]);
    assert!(
        r.0.is_err(),
        "a container was answered while the daemon hung"
    );
    assert!(tb.host.nft_table().is_some());
    d.signal(Signal::SIGCONT);

    // SIGTERM: STOPPING=1, then a clean exit.
    d.signal(Signal::SIGTERM);
    let mut stopping = false;
    while let Some((_, m)) = sock.next(Duration::from_secs(5)) {
        if m.lines().any(|l| l == "STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    assert!(d.wait(Duration::from_secs(10)).success());
}

#[test]
fn without_a_notify_socket_the_daemon_runs_as_before() {
    require_root!();
    let tb = Testbed::new();
    // A watchdog interval alone (no socket to send to) changes nothing.
    let d = tb.daemon_unready_env(&[], &[("WATCHDOG_USEC", "1500000")]);
    d.wait_for("interception live", Duration::from_secs(15));
    assert_eq!(tb.status("/latest/meta-data/"), 200);
    thread::sleep(Duration::from_millis(1200));
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    let log = d.log().join("\n");
    assert!(
        !log.contains("service manager"),
        "the daemon talked about a service manager:\n{log}"
    );
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a tool this tier needs is on PATH; where the suite requires every test,
/// its absence fails (scripts/install-deps.sh installs it).
fn have(tool: &str, test: &str) -> bool {
    if try_cmd(&["sh", "-c", &format!("command -v {tool}")]).0 {
        return true;
    }
    harness::suite::unable(
        test,
        &format!("{tool} not found (scripts/install-deps.sh test installs it)"),
    )
}

/// Runs a shell script in a private mount namespace (its mounts vanish with it).
fn in_private_mounts(script: &str) -> (bool, String, String) {
    try_cmd(&[
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-euc",
        script,
    ])
}

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

/// The package `cargo deb` built (scripts/test.sh builds it first).
fn package(test: &str) -> Option<PathBuf> {
    let deb = std::env::var_os("IMDS_PROXY_DEB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            repo().join(format!(
                "target/debian/imds-proxy_{}-1_amd64.deb",
                env!("CARGO_PKG_VERSION")
            ))
        });
    if deb.exists() {
        return Some(deb);
    }
    if std::env::var("IMDS_PROXY_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: no package at {} (cargo deb builds it)",
            deb.display()
        );
    }
    skipped(
        test,
        &format!("no package at {} (cargo deb)", deb.display()),
    );
    None
}

#[test]
fn the_package_holds_the_daemon_its_unit_config_and_docs() {
    let test = "the_package_holds_the_daemon_its_unit_config_and_docs";
    let Some(deb) = package(test) else { return };
    let deb = deb.to_str().unwrap();
    let contents = cmd(&["dpkg-deb", "-c", deb]);
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/imds-proxy"),
        ("-rw-r--r--", "./lib/systemd/system/imds-proxy.service"),
        ("-rw-r--r--", "./etc/imds-proxy/config.toml"),
        (
            "-rw-r--r--",
            "./usr/share/doc/imds-proxy/examples/emulator.toml",
        ),
        ("-rw-r--r--", "./usr/share/doc/imds-proxy/README.md"),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&format!(" {path}"))),
            "{path} ({mode}) not in the package:\n{contents}"
        );
    }
    let unit = repo().join("packaging/imds-proxy.service");
    let shipped = cmd(&[
        "sh",
        "-c",
        &format!("dpkg-deb --fsys-tarfile {deb} | tar -xO ./lib/systemd/system/imds-proxy.service"),
    ]);
    assert_eq!(shipped, std::fs::read_to_string(unit).unwrap());

    let control = cmd(&["dpkg-deb", "-f", deb, "Depends"]);
    for lib in ["libnftnl", "libmnl", "libc6"] {
        assert!(control.contains(lib), "Depends lacks {lib}: {control}");
    }
    let dir = tempfile::tempdir().unwrap();
    cmd(&["dpkg-deb", "-e", deb, dir.path().to_str().unwrap()]);
    let conffiles = std::fs::read_to_string(dir.path().join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/imds-proxy/config.toml");
    // The shipped configuration is the daemon's own defaults: it loads, every key
    // commented out.
    let config = cmd(&[
        "sh",
        "-c",
        &format!("dpkg-deb --fsys-tarfile {deb} | tar -xO ./etc/imds-proxy/config.toml"),
    ]);
    assert!(
        config
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "the default config sets something:\n{config}"
    );
}

#[test]
fn the_maintainer_scripts_open_the_path_only_on_purge() {
    let test = test_name!();
    if !root_or_skip(test) {
        return;
    }
    let Some(deb) = package(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scripts = d.join("control");
    cmd(&[
        "dpkg-deb",
        "-e",
        deb.to_str().unwrap(),
        scripts.to_str().unwrap(),
    ]);
    // Stand-ins that record how they are called: systemd's tools, and the daemon.
    let log = d.join("calls.log");
    let stubs = d.join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    for tool in [
        "deb-systemd-helper",
        "deb-systemd-invoke",
        "systemctl",
        "imds-proxy",
    ] {
        let path = stubs.join(tool);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"{tool} $*\" >> {}\n", log.display()),
        )
        .unwrap();
        cmd(&["chmod", "755", path.to_str().unwrap()]);
    }
    let etc = d.join("etc");
    std::fs::create_dir_all(etc.join("imds-proxy")).unwrap();
    std::fs::write(etc.join("imds-proxy/config.toml"), "# test\n").unwrap();
    // In a private mount namespace: a systemd that "runs" (/run/systemd/system), an
    // empty /var/lib, and the stand-in daemon at /usr/bin/imds-proxy.
    let s = scripts.display();
    let step = |name: &str, script: &str| {
        format!(
            "echo '== {name}' >> {log}; {s}/{script}\n",
            log = log.display()
        )
    };
    let play = [
        step("install", "postinst configure"),
        step("upgrade: old prerm", "prerm upgrade 0.1.0-1"),
        step("upgrade: old postrm", "postrm upgrade 0.1.0-1"),
        step("upgrade: new postinst", "postinst configure 0.1.0-1"),
        step("remove: prerm", "prerm remove"),
        step("remove: postrm", "postrm remove"),
        step("purge", "postrm purge"),
    ]
    .concat();
    let (ok, out, err) = in_private_mounts(&format!(
        "mount -t tmpfs tmpfs /run
         mkdir -p /run/systemd/system
         mount -t tmpfs tmpfs /var/lib
         mount -t overlay overlay -o lowerdir={stubs}:/usr/bin /usr/bin
         mount -t overlay overlay -o lowerdir={etc}:/etc /etc
         export PATH={stubs}:$PATH
         {play}
         test ! -e /var/lib/imds-proxy",
        stubs = stubs.display(),
        etc = etc.display(),
    ));
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ok,
        "maintainer scripts failed:\n{out}{err}\ncalls:\n{calls}"
    );
    let steps: Vec<(&str, Vec<&str>)> = calls
        .split("== ")
        .skip(1)
        .map(|s| {
            let mut lines = s.lines();
            (lines.next().unwrap(), lines.collect())
        })
        .collect();
    let of = |name: &str| -> Vec<&str> {
        steps
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no step {name}:\n{calls}"))
            .1
            .clone()
    };
    let uninstalls = |name: &str| of(name).iter().any(|l| l.contains("uninstall"));
    assert!(of("install").contains(&"deb-systemd-helper enable imds-proxy.service"));
    assert!(of("install").contains(&"deb-systemd-invoke start imds-proxy.service"));
    assert!(
        !of("upgrade: old prerm").iter().any(|l| l.contains("stop")),
        "upgrade stopped the service before the new binary was there:\n{calls}"
    );
    assert!(of("upgrade: new postinst").contains(&"deb-systemd-invoke restart imds-proxy.service"));
    assert!(of("remove: prerm").contains(&"deb-systemd-invoke stop imds-proxy.service"));
    for name in [
        "install",
        "upgrade: old prerm",
        "upgrade: old postrm",
        "upgrade: new postinst",
        "remove: prerm",
        "remove: postrm",
    ] {
        assert!(!uninstalls(name), "{name} ran uninstall:\n{calls}");
    }
    assert_eq!(
        of("purge")
            .iter()
            .filter(|l| l.starts_with("imds-proxy "))
            .collect::<Vec<_>>(),
        [&"imds-proxy uninstall --config /var/lib/imds-proxy/purge/config.toml"],
        "purge must run uninstall once, with the configuration the service had:\n{calls}"
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
