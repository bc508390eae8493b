//! What runs on a real VM judges the emulator's instances: cloud-init's EC2, GCE and
//! Azure datasources (Debian's package) and the Node.js SDKs from npm
//! (`@aws-sdk/credential-providers`, `@azure/identity`, `google-auth-library`,
//! `gcp-metadata`), asking for the built-in example's instance (examples/emulator.toml)
//! as they would on a VM, at the real addresses. The judges are tests/agents/*; what
//! they must find is read from the same file through the library.
//!
//! Two ways in:
//! - directly: `imds-proxy emulate` on loopback (no root), the judges on the host, each
//!   reaching 169.254.169.254 by its own documented redirection (cloud-init through
//!   HTTP_PROXY, so its URLs keep the real address; the Node SDKs by their endpoint
//!   variables); and the signed documents checked with `openssl smime -verify` against
//!   the published certificate, as AWS and Azure document it;
//! - through the proxy (root, Docker): `imds-proxy run --upstream` in front of
//!   `imds-proxy emulate` in a stand-in cloud namespace, the judges in unmodified
//!   `FROM scratch` containers with the host's Python, cloud-init, node and the SDKs
//!   mounted read-only, nothing pointing them anywhere.
//!
//! Needs $IMDS_PROXY_NODE_MODULES (scripts/test.sh installs the SDKs there), node 20
//! or newer first on PATH (the one whose version keyed that directory) and cloud-init
//! for /usr/bin/python3.
//!
//! One file per topic.

#[path = "agents/capture.rs"]
mod capture;
#[path = "agents/judges.rs"]
mod judges;
#[path = "agents/node.rs"]
mod node;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::docker::*;
use harness::sdk::start_emulated_cloud_serving;
use harness::*;
use imds_proxy::emulator::EmulatorConfig;
use serde_json::{json, Value};

use node::prerequisites;

/// The instances judged: the built-in example.
const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/emulator.toml");
/// Where scripts/test.sh installed tests/agents/package.json.
const NODE_MODULES_VAR: &str = "IMDS_PROXY_NODE_MODULES";
/// Debian's interpreter, which has cloud-init.
const PYTHON: &str = "/usr/bin/python3";
/// The oldest node the SDKs run on (@aws-sdk/credential-providers and @azure/identity
/// declare `"node": ">=20.0.0"`).
const NODE_MAJOR: u32 = 20;

/// One GET on loopback with one extra header line, `Connection: close`.
fn plain_get(listen: &str, path: &str, header: &str) -> std::io::Result<Answer> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(listen)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {IMDS}\r\n{header}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_answer(&buf)
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
