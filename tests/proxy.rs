//! The proxy on loopback against the fake metadata service: what a container sees when
//! the upstream is healthy, down, slow, huge or broken, how each container is told
//! apart, and how the upstream is protected. No root needed. One file per topic.

#[path = "proxy/callers.rs"]
mod callers;
#[path = "proxy/pacing.rs"]
mod pacing;
#[path = "proxy/relay.rs"]
mod relay;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::rig::{self, start_settings, FakeOrigins, Running};
use harness::{parse_answer, Answer, FakeImds};
use imds_proxy::docker::InventoryHandle;
use imds_proxy::policy::select::Policies;
use imds_proxy::proxy;

/// A proxy in front of `upstream` whose requests may take `timeout_ms`; every caller
/// allowed.
async fn start(upstream: SocketAddr, timeout_ms: u64) -> Running {
    start_with(upstream, timeout_ms, None, "allow").await
}

/// [`start`] with this inventory, and the unknown-caller policy `unknown`.
async fn start_with(
    upstream: SocketAddr,
    timeout_ms: u64,
    inventory: Option<InventoryHandle>,
    unknown: &str,
) -> Running {
    let policies = Policies::builtin("allow", unknown);
    start_full(
        upstream,
        timeout_ms,
        inventory,
        policies,
        FakeOrigins::default(),
    )
    .await
}

/// [`start`] with this inventory, these policies, and connection origins as `origins`
/// reports them.
async fn start_full(
    upstream: SocketAddr,
    timeout_ms: u64,
    inventory: Option<InventoryHandle>,
    policies: Policies,
    origins: FakeOrigins,
) -> Running {
    let mut s = rig::settings(upstream);
    s.request_timeout = Duration::from_millis(timeout_ms);
    s.aws_request_timeout = Duration::from_millis(timeout_ms);
    s.inventory = inventory;
    s.origins = Arc::new(origins);
    s.policies = rig::policies(policies);
    start_settings(s).await
}

/// Sends raw bytes, reads until close; returns the answer and the time it took.
async fn raw(addr: SocketAddr, req: Vec<u8>) -> (Result<Answer, std::io::Error>, Duration) {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = (|| {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(&req)?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            parse_answer(&buf)
        })();
        (r, t.elapsed())
    })
    .await
    .unwrap()
}

/// A GET of `path` as each provider's clients send it (each service ignores the
/// others' header).
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// The `error` code of one of the proxy's own JSON errors.
fn json_error(a: &Answer) -> String {
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("application/json"),
        "{a:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&a.body).expect("JSON body");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    v["error"].as_str().unwrap().to_owned()
}

/// A request from a chosen loopback address (each stands for one container).
async fn from(src: &str, addr: SocketAddr, path: &str) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(&get(path)).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    parse_answer(&buf).unwrap()
}

/// The heads of every request the upstream got.
fn heads(up: &FakeImds) -> Vec<String> {
    up.seen().into_iter().map(|s| s.head).collect()
}
