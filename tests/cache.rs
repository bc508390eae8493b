//! The token cache as containers see it: the proxy on loopback in front of the fake
//! metadata service, which issues Azure managed-identity tokens and counts the requests
//! it gets. Each container stands in as an address 127.0.0.N. No root needed.
//!
//! Nothing here waits for time to pass: what a token's age changes (expiry, the minimum
//! life left, refreshes, the error window) is tested on a paused clock with the cache's
//! own unit tests (src/proxy/cache/tests.rs).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::http::request;
use harness::rig::{self, from_raw, inventory_of, labelled, start_settings};
use harness::{parse_answer, FakeImds};
use imds_proxy::proxy::cache::{CacheSettings, AZURE_MIN_REMAINING};
use imds_proxy::proxy::ProxySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Barrier;

const TOKEN: &str =
    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
const HOUR: Duration = Duration::from_secs(3600);

/// The fake metadata service issuing Azure tokens that live `life`.
fn upstream(life: Duration) -> FakeImds {
    let up = FakeImds::loopback();
    up.issue_azure_tokens(life);
    up
}

fn settings(up: &FakeImds, cache: CacheSettings) -> ProxySettings {
    let mut s = rig::settings(up.addr());
    s.request_timeout = Duration::from_secs(3);
    s.aws_request_timeout = Duration::from_secs(1);
    // The documented Azure limits stay on: coalescing must not need them lifted.
    s.cache = cache;
    s
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token request from the container at `src`, and the token it got.
async fn token(src: &str, addr: SocketAddr, target: &str) -> (u16, serde_json::Value) {
    let a = from_raw(src, addr, request("GET", target, &[("Metadata", "true")])).await;
    let v = serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null);
    (a.status, v)
}

/// Like [`token`], but waits at `sent` once the request has gone out, so that a test
/// knows when every request it started is on its way.
async fn token_after(
    src: String,
    addr: SocketAddr,
    target: &str,
    sent: Arc<Barrier>,
) -> (u16, serde_json::Value) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let req = request("GET", target, &[("Metadata", "true")]);
    s.write_all(req.as_bytes()).await.unwrap();
    sent.wait().await;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let a = parse_answer(&buf).unwrap();
    let v = serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null);
    (a.status, v)
}

fn secs(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_misses_are_one_upstream_request_and_all_get_the_token() {
    let up = upstream(HOUR);
    let p = start_settings(settings(&up, CacheSettings::default())).await;
    // The service holds its answer until all 200 requests are on their way.
    let held = up.hold();
    let sent = Arc::new(Barrier::new(201));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            // Spread over many "containers": each may hold only so many connections.
            let src = format!("127.0.{}.{}", 1 + i / 100, 2 + i % 100);
            tokio::spawn(token_after(src, p.addr, TOKEN, sent.clone()))
        })
        .collect();
    sent.wait().await;
    drop(held);
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["access_token"], up.secret(1), "{v}");
    }
    assert_eq!(up.count(), 1, "200 concurrent misses, upstream requests");

    // Later requests are answered from the cache, with what is left of the token's
    // life, both ways Azure counts it.
    let (status, v) = token("127.0.0.9", p.addr, TOKEN).await;
    assert_eq!((status, &v["access_token"]), (200, &up.secret(1).into()));
    let left = secs(&v, "expires_in");
    assert!((3590..=3600).contains(&left), "expires_in {left}");
    let on = secs(&v, "expires_on") - now_unix();
    assert!(on.abs_diff(left) <= 2, "expires_on is {on} s away: {v}");
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_identities_never_share_a_token() {
    let up = upstream(HOUR);
    let list = [
        labelled(
            'a',
            "127.0.0.2",
            &[("imds-proxy.azure.client-id", "aaaa-1111")],
        ),
        labelled(
            'b',
            "127.0.0.3",
            &[("imds-proxy.azure.client-id", "bbbb-2222")],
        ),
    ];
    let mut s = settings(&up, CacheSettings::default());
    s.inventory = Some(inventory_of(&list, false));
    let p = start_settings(s).await;
    // Both containers ask at the same moment, twenty times each, with the same request.
    let held = up.hold();
    let sent = Arc::new(Barrier::new(41));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let src = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
            let answer = token_after(src.to_owned(), p.addr, TOKEN, sent.clone());
            tokio::spawn(async move { (src, answer.await) })
        })
        .collect();
    sent.wait().await;
    drop(held);
    let mut seen = std::collections::HashMap::new();
    for t in tasks {
        let (src, (status, v)) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        let want = if src == "127.0.0.2" {
            "aaaa-1111"
        } else {
            "bbbb-2222"
        };
        assert_eq!(v["client_id"], want, "{src} got {v}");
        seen.entry(src)
            .or_insert_with(std::collections::HashSet::new)
            .insert(v["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(up.count(), 2, "one upstream request per identity");
    let (a, b) = (&seen["127.0.0.2"], &seen["127.0.0.3"]);
    assert_eq!((a.len(), b.len()), (1, 1), "{seen:?}");
    assert!(a.is_disjoint(b), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_upstream_is_not_asked_again_by_every_caller() {
    let up = upstream(HOUR);
    up.fail(true);
    // A window no loaded machine outlasts; that it ends is the unit tests' business.
    let cache = CacheSettings {
        errors: Duration::from_secs(60),
        ..CacheSettings::default()
    };
    let p = start_settings(settings(&up, cache)).await;
    let (status, _) = token("127.0.0.2", p.addr, TOKEN).await;
    assert_eq!(status, 500);
    let after_first = up.count();
    assert!(after_first >= 1);
    // Within the error window every caller gets the failure without a new request.
    for i in 3..13 {
        let (status, _) = token(&format!("127.0.0.{i}"), p.addr, TOKEN).await;
        assert_eq!(status, 500);
    }
    assert_eq!(
        up.count(),
        after_first,
        "remembered failures reach no upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bypass_cache_is_sent_once_and_then_served_from_the_cache() {
    let up = upstream(HOUR);
    let p = start_settings(settings(&up, CacheSettings::default())).await;
    let (_, first) = token("127.0.0.2", p.addr, TOKEN).await;
    assert_eq!(first["access_token"], up.secret(1));
    let bypass = format!("{TOKEN}&bypass_cache=true");
    let (status, v) = token("127.0.0.2", p.addr, &bypass).await;
    assert_eq!((status, &v["access_token"]), (200, &up.secret(2).into()));
    // A second bypass right after gets the token just fetched; plain requests too.
    let (_, v) = token("127.0.0.3", p.addr, &bypass).await;
    assert_eq!(v["access_token"], up.secret(2));
    let (_, v) = token("127.0.0.4", p.addr, TOKEN).await;
    assert_eq!(v["access_token"], up.secret(2));
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_cache_off_every_request_reaches_the_upstream() {
    let up = upstream(HOUR);
    let off = CacheSettings {
        tokens: false,
        ..CacheSettings::default()
    };
    let p = start_settings(settings(&up, off)).await;
    for i in 1..=3 {
        let (status, v) = token("127.0.0.2", p.addr, TOKEN).await;
        assert_eq!((status, &v["access_token"]), (200, &up.secret(i).into()));
    }
    assert_eq!(up.count(), 3);
}

/// Everything the proxy logs, for the one test that reads it.
#[derive(Clone)]
struct Log {
    text: Arc<Mutex<Vec<u8>>>,
    /// Bytes written so far: changes with every write.
    written: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.text.lock().unwrap().extend_from_slice(b);
        self.written.send_modify(|n| *n += b.len());
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn new() -> Self {
        Self {
            text: Arc::default(),
            written: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    /// Waits until the log holds `needle` (for 10 s at the most).
    async fn wait_for(&self, needle: &str) -> bool {
        let mut written = self.written.subscribe();
        let found = written.wait_for(|_| self.text().contains(needle));
        let found = tokio::time::timeout(Duration::from_secs(10), found).await;
        found.is_ok()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_refresh_keeps_serving_the_valid_token_and_is_logged() {
    let log = Log::new();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    // Half a minute of serving left: the first hit after the fill starts a refresh.
    let up = upstream(AZURE_MIN_REMAINING + Duration::from_secs(30));
    let p = start_settings(settings(&up, CacheSettings::default())).await;
    let (_, v) = token("127.0.0.2", p.addr, TOKEN).await;
    assert_eq!(v["access_token"], up.secret(1));
    up.fail(true);
    let (status, v) = token("127.0.0.2", p.addr, TOKEN).await;
    assert_eq!((status, &v["access_token"]), (200, &up.secret(1).into()));
    // The refresh that hit started fails (after its retries) and says so...
    let logged = log.wait_for("refreshing a cached token failed").await;
    assert!(logged, "log:\n{}", log.text());
    assert!(up.count() >= 2, "a refresh was tried");
    // ...and the valid token is still served, and never logged.
    let (status, v) = token("127.0.0.3", p.addr, TOKEN).await;
    assert_eq!((status, &v["access_token"]), (200, &up.secret(1).into()));
    let text = log.text();
    assert!(!text.contains(&up.secret(1)), "a token in the log:\n{text}");
}
