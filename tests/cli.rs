//! The command line as a user meets it: exit codes and messages. No root needed, but
//! for the check that `rules` changes nothing.

use std::process::Command;

use harness::{require_root, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_imds-proxy");

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_in(None, args, env)
}

/// Runs the command line with `args` and `env` (and no other `IMDS_PROXY_` variable),
/// inside `ns` if given.
fn run_in(ns: Option<&Netns>, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, BIN]);
            c
        }
        None => Command::new(BIN),
    };
    c.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("IMDS_PROXY_")) {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    // Every case here ends by itself; a daemon that starts serving instead is a failure,
    // not a hang of the suite.
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("imds-proxy {args:?} was still running after 30 s");
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_configuration_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "listen = \"8.8.8.8\"\nbogus = 1\n").unwrap();
    let (code, _, err) = run(
        &[
            "run",
            "--config",
            file.to_str().unwrap(),
            "--upstream",
            "ftp://x",
            "--request-timeout-ms",
            "0",
        ],
        &[("IMDS_PROXY_BRIDGES", "docker0,bad name")],
    );
    assert_eq!(code, 2, "{err}");
    for needle in [
        "bogus (from config file): unknown key",
        "upstream (from --upstream / IMDS_PROXY_UPSTREAM)",
        "listen (from config file): 8.8.8.8 is not link-local",
        "bridges (from --bridges / IMDS_PROXY_BRIDGES)",
        "request_timeout_ms",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_upstream_and_an_emulator_together_are_refused() {
    let (code, _, err) = run(
        &["run", "--upstream", "http://169.254.169.254"],
        &[("IMDS_PROXY_EMULATOR", "/etc/imds-proxy/emulator.toml")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "emulator (from --emulator / IMDS_PROXY_EMULATOR): cannot be used with upstream"
        ),
        "{err}"
    );
}

#[test]
fn a_bad_emulator_file_names_every_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e.toml");
    std::fs::write(&file, "[gce]\nproject_id = 5\n").unwrap();
    let (code, _, err) = run(
        &[
            "emulate",
            "--emulator",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    for needle in [
        "gce.project_id: must be a string, not integer",
        "gce.instance: missing",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let (code, _, err) = run(&["emulate", "--emulator", "/nonexistent/e.toml"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read emulator file /nonexistent/e.toml"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_an_error_not_a_panic() {
    let (code, _, err) = run(&["rules", "--config", "/nonexistent/x.toml"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("failed to read config file /nonexistent/x.toml"),
        "{err}"
    );
}

#[test]
fn rules_prints_the_table_for_this_host_and_changes_nothing() {
    // `lo` is a bridge pattern here only so the set has a known element on any host.
    let rules = ["rules", "--bridges", "lo,br-*"];
    let env = [("IMDS_PROXY_LISTEN", "169.254.7.7:8080")];
    let (code, out, err) = run(&rules, &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("table ip imds_proxy {\n"), "{out}");
    // Other `br-*` links on the host (Docker networks) may follow `lo` in the set.
    assert!(out.contains("elements = { \"lo\""), "{out}");
    assert!(out.contains("dnat to 169.254.7.7:8080"), "{out}");
    // Refusals name no interface: whatever the patterns, every forwarded packet.
    assert!(
        out.contains("\n\t\tip daddr 169.254.169.254 reject with tcp reset\n"),
        "{out}"
    );
    assert!(!out.contains("iifname \"br-*\""), "{out}");

    // Printing installs nothing. Whether it did shows only to root (the tables), and
    // only where nothing else changes the network at the same time: a namespace of its
    // own, where `rules` prints just `lo`.
    require_root!();
    let ns = Netns::new("rules");
    let before = network_state(&ns);
    let (code, out, err) = run_in(Some(&ns), &rules, &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("elements = { \"lo\" }"), "{out}");
    assert_eq!(network_state(&ns), before, "`rules` changed the network");
    // The comparison would have seen what `run` installs: a table, a link.
    ns.nft("table ip imds_proxy {\n}\n");
    assert_ne!(network_state(&ns), before, "a table went unseen");
    ns.exec(&["nft", "flush", "ruleset"]);
    assert_eq!(network_state(&ns), before);
    // (A bridge: the daemon's fallback where the kernel has no dummy links.)
    ns.ip("link add imdsproxy0 type bridge");
    assert_ne!(network_state(&ns), before, "a link went unseen");
}

/// Everything `run` would change in `ns`: its links with their addresses, its routes
/// and its nftables ruleset.
fn network_state(ns: &Netns) -> String {
    [
        ns.exec(&["ip", "-d", "address", "show"]),
        ns.exec(&["ip", "-4", "route", "show", "table", "all"]),
        ns.exec(&["ip", "-6", "route", "show", "table", "all"]),
        ns.exec(&["nft", "list", "ruleset"]),
    ]
    .join("\n")
}

#[test]
fn help_documents_the_environment_variables() {
    let (code, out, _) = run(&["run", "--help"], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("IMDS_PROXY_UPSTREAM") && out.contains("--remove-on-exit"),
        "{out}"
    );
}

/// One request to `emulate --log-format <format>`; the audit line it logged.
fn audit_line(format: &str) -> String {
    use std::io::{Read, Write};
    let port = 18_600 + (std::process::id() % 400) as u16 + if format == "json" { 0 } else { 1 };
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args(["emulate", "--listen", &listen, "--log-format", format])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start emulate");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut s = loop {
        match std::net::TcpStream::connect(&listen) {
            Ok(s) => break s,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => panic!("emulate did not listen: {e}"),
        }
    };
    write!(s, "GET /computeMetadata/v1/instance/id HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    err.lines()
        .find(|l| l.contains("/computeMetadata/v1/instance/id"))
        .unwrap_or_else(|| panic!("no audit line in:\n{err}"))
        .to_owned()
}

#[test]
fn the_audit_line_names_each_field_once_as_text_or_json() {
    let text = audit_line("text");
    for field in [" client=", " method=", " path=", " decision=", " status="] {
        assert_eq!(text.matches(field).count(), 1, "{field} in {text}");
    }
    let json = audit_line("json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON object per line");
    assert_eq!(v["message"], "request");
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["path"], "/computeMetadata/v1/instance/id");
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["status"], 200);
    assert_eq!(v["level"], "INFO");
    assert!(v["timestamp"].is_string());
}
