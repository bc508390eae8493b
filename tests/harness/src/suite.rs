//! What the suite's script (scripts/test.sh) asks of every test, through the
//! environment:
//! - `IMDS_PROXY_REQUIRE_ROOT_TESTS=1`: a test that cannot run (not root, no Docker
//!   engine, a prerequisite missing) fails instead of skipping;
//! - `IMDS_PROXY_SKIP_FILE`: every skip is also appended there, whatever libtest
//!   captured, so the script can list them and fail;
//! - `IMDS_PROXY_MEASURE_FILE`: every measurement, shown at the end of the run;
//! - `IMDS_PROXY_DAEMON_LOG_FILE`, `IMDS_PROXY_ISSUED_FILE`: every line a test's daemon
//!   logged and every credential a fake cloud issued, for the check that none of the
//!   latter appears in the former.

use std::io::Write;

/// Whether the suite demands that every root and Docker test runs.
pub fn required() -> bool {
    std::env::var("IMDS_PROXY_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1")
}

/// `false` (and the skip recorded) when `test` cannot run for `why`; a failure instead
/// when the suite demands every test.
pub fn unable(test: &str, why: &str) -> bool {
    if required() {
        panic!("{test}: {why} (IMDS_PROXY_REQUIRE_ROOT_TESTS=1 demands every test)");
    }
    skipped(test, why);
    false
}

/// Root tests run only as root; where the suite demands them, not being root fails.
pub fn root_or_skip(test: &str) -> bool {
    nix::unistd::geteuid().is_root() || unable(test, "needs root")
}

/// Reports a measurement: printed, and appended to $IMDS_PROXY_MEASURE_FILE so the test
/// command can show every number at the end.
pub fn measure(what: &str, value: impl std::fmt::Display) {
    let line = format!("{what}: {value}");
    eprintln!("MEASURE {line}");
    append_to_env_file("IMDS_PROXY_MEASURE_FILE", &line);
}

/// Appends a line to the file named by environment variable `var`, if it is set (the
/// test command collects measurements, daemon logs and issued credentials this way).
pub fn append_to_env_file(var: &str, line: &str) {
    if let Ok(path) = std::env::var(var) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write of the whole line: threads appending at once (a fake serving
            // several connections) must not interleave their halves.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// Reports a skipped test (or part of one): printed (libtest shows it only on failure),
/// and appended to $IMDS_PROXY_SKIP_FILE so the test command can list every skip and fail.
pub fn skipped(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}\n");
    eprint!("{line}");
    if let Ok(path) = std::env::var("IMDS_PROXY_SKIP_FILE") {
        // One write per line: tests run in parallel and append to the same file.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("{test}: cannot record the skip in {path}: {e}"));
    }
}
