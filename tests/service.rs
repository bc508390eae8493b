//! The service tier: the daemon under a service manager's protocol, the systemd unit as
//! systemd reads it, and the Debian package with its maintainer scripts. Root:
//! namespaces and private mounts, each removed when the test ends. One file per topic.

#[path = "service/notify.rs"]
mod notify;
#[path = "service/package.rs"]
mod package;
#[path = "service/unit.rs"]
mod unit;

use harness::try_cmd;

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
