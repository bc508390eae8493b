//! The command line as a user meets it: exit codes and messages. No root needed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_imds-proxy");

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("IMDS_PROXY_")) {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    let out = c.output().unwrap();
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
fn run_without_an_upstream_says_what_to_pass() {
    let (code, _, err) = run(&["run"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("upstream: required"), "{err}");
    assert!(err.contains("--upstream http://169.254.169.254"), "{err}");
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
    let (code, out, err) = run(
        &["rules", "--bridges", "lo,br-*"],
        &[("IMDS_PROXY_LISTEN", "169.254.7.7:8080")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("table ip imds_proxy {\n"), "{out}");
    assert!(out.contains("elements = { \"lo\" }"), "{out}");
    assert!(out.contains("dnat to 169.254.7.7:8080"), "{out}");
    assert!(
        out.contains("iifname \"br-*\" ip daddr 169.254.169.254 reject"),
        "{out}"
    );
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
