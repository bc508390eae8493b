//! The test bed of imds-proxy's integration tests, a crate of its own so that it is
//! compiled once for every test binary rather than once in each.
//!
//! - [`fake`]: the one fake metadata service every tier talks to, counting what it gets
//!   and answering as a test scripts it.
//! - [`suite`]: what the suite's script asks of every test (root tests that fail
//!   rather than skip when it demands them, every skip recorded, measurements
//!   collected) and [`docker::RootNamespace`], the prelude of the tests that use the
//!   root network namespace.
//! - [`netns`], [`testbed`]: network namespaces standing in for a Docker host, a
//!   container and a cloud, removed on drop.
//! - [`daemon`]: the daemon as a child process, its log collected.
//! - [`http`]: a plain HTTP/1.1 client, from inside a namespace or from a chosen
//!   loopback address.
//! - [`rig`]: the proxy in-process on loopback, with containers standing in as loopback
//!   addresses.
//! - [`docker`], [`sdk`]: scenes with the real Docker engine, and the real SDKs as
//!   judges.
//!
//! Everything a test creates here is removed on drop, also when the test fails.

pub mod daemon;
pub mod docker;
pub mod fake;
pub mod http;
pub mod netns;
pub mod rig;
pub mod sdk;
pub mod suite;
pub mod testbed;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub use daemon::{refused, until, Daemon};
pub use fake::{FakeImds, Seen};
pub use http::{http, parse_answer, Answer};
pub use netns::{without_table_flags, Netns};
pub use suite::{append_to_env_file, measure, root_or_skip, skipped};
pub use testbed::{attach_container, Testbed};

/// The metadata address.
pub const IMDS: &str = "169.254.169.254";
/// The daemon's default IPv4 listen address.
pub const PROXY_ADDR: &str = "169.254.93.254";
/// AWS's IPv6 metadata address, and as an address with the HTTP port.
pub const IMDS6: &str = "fd00:ec2::254";
pub const IMDS6_HTTP: &str = "[fd00:ec2::254]:80";
/// The daemon's default IPv6 listen address.
pub const PROXY_ADDR6: &str = "fdf3:6f62:ab7c::254";
/// What starts the daemon's audit event, one per request answered.
pub const AUDIT: &str = " request client=";

/// The daemon's executable. Cargo builds it before any integration test runs, into the
/// directory above the one that holds the test binaries (`target/<profile>/deps`).
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's own path");
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test binary in target/<profile>/deps");
        let bin = profile.join("imds-proxy");
        assert!(
            bin.is_file(),
            "{} is missing: run the tests with cargo, which builds it first",
            bin.display()
        );
        bin.to_str().expect("a UTF-8 target directory").to_owned()
    })
}

/// The repository's top directory (where Cargo.toml, examples/ and tests/ are).
pub fn repo() -> &'static Path {
    static REPO: OnceLock<PathBuf> = OnceLock::new();
    REPO.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .expect("the repository's top directory")
    })
}

/// A file or directory of the repository, as an absolute path without `..`.
pub fn repo_path(relative: &str) -> String {
    repo()
        .join(relative)
        .to_str()
        .expect("a UTF-8 repository path")
        .to_owned()
}

/// The name of the test function it is used in (its last path segment): what skips and
/// failures are reported under.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = ::std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}

/// Returns from the test unless it runs as root (see [`suite::root_or_skip`]): the
/// first line of every test that needs namespaces or nftables.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::root_or_skip($crate::test_name!()) {
            return;
        }
    };
}

/// Runs a command, panicking with its output if it fails; its standard output.
pub fn cmd(args: &[&str]) -> String {
    let (ok, out, err) = try_cmd(args);
    assert!(ok, "{args:?} failed: {out}\n{err}");
    out
}

/// Runs a command: (success, stdout, stderr).
pub fn try_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command with no input and its output discarded: whether it succeeded.
pub fn quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
