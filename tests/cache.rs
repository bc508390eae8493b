//! The token cache as containers see it: the proxy on loopback in front of an upstream
//! that issues Azure managed-identity tokens and counts the requests it gets. Each
//! container stands in as an address 127.0.0.N. No root needed.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::rig::{
    from_raw, inventory_of, labelled, read_head, request, start_settings, FakeOrigins,
};
use imds_proxy::proxy::cache::{CacheSettings, AZURE_MIN_REMAINING};
use imds_proxy::proxy::{self, ProxySettings};

const TOKEN: &str =
    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";

/// What the upstream does with the next token requests.
#[derive(Debug, Clone)]
struct Script {
    /// Lifetime of the tokens it issues, in seconds.
    life: u64,
    /// How long it takes to answer.
    hold: Duration,
    /// Answers 500 instead of a token.
    failing: bool,
}

/// An upstream issuing tokens `tok-<n>` (n counts from 1), each naming the identity
/// asked for; every request it gets is counted.
struct Upstream {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    requests: Arc<AtomicUsize>,
}

impl Upstream {
    fn start(life: u64, hold_ms: u64) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script {
            life,
            hold: Duration::from_millis(hold_ms),
            failing: false,
        }));
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, r) = (script.clone(), requests.clone());
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (s, r) = (s.clone(), r.clone());
                thread::spawn(move || serve(c, &s, &r));
            }
        });
        Self {
            addr,
            script,
            requests,
        }
    }

    fn count(&self) -> usize {
        self.requests.load(SeqCst)
    }

    fn set_failing(&self, failing: bool) {
        self.script.lock().unwrap().failing = failing;
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn serve(c: TcpStream, script: &Mutex<Script>, requests: &AtomicUsize) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    loop {
        let Some(head) = read_head(&mut r) else {
            return;
        };
        let n = requests.fetch_add(1, SeqCst) + 1;
        let s = script.lock().unwrap().clone();
        thread::sleep(s.hold);
        let target = head.split_whitespace().nth(1).unwrap_or("/");
        let client = target
            .split('&')
            .find_map(|kv| kv.strip_prefix("client_id="))
            .unwrap_or("system");
        let (status, body) = if s.failing {
            (
                "500 Internal Server Error",
                r#"{"error":"unknown"}"#.to_owned(),
            )
        } else {
            let now = now_unix();
            let life = s.life;
            (
                "200 OK",
                format!(
                    r#"{{"access_token":"tok-{n}","client_id":"{client}","expires_in":"{life}","expires_on":"{}","ext_expires_in":"{life}","not_before":"{now}","resource":"https://vault.azure.net","token_type":"Bearer"}}"#,
                    now + life
                ),
            )
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn settings(up: &Upstream, cache: CacheSettings) -> ProxySettings {
    ProxySettings {
        backend: proxy::Backend::Upstream(format!("http://{}", up.addr).parse().unwrap()),
        request_timeout: Duration::from_secs(3),
        aws_request_timeout: Duration::from_secs(1),
        // The documented Azure limits stay on: coalescing must not need them lifted.
        upstream_limits: Default::default(),
        cache,
        max_body_bytes: 1024,
        max_header_bytes: 8192,
        inventory: None,
        identify_wait: Duration::from_millis(300),
        origins: Arc::new(FakeOrigins::default()),
        policies: tokio::sync::watch::channel(Arc::new(
            imds_proxy::policy::select::Policies::builtin("allow", "allow"),
        ))
        .1,
    }
}

/// A token request from the container at `src`, and the token it got.
async fn token(src: &str, addr: SocketAddr, target: &str) -> (u16, serde_json::Value) {
    let a = from_raw(src, addr, request("GET", target, &[("Metadata", "true")])).await;
    let v = serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null);
    (a.status, v)
}

fn secs(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_misses_are_one_upstream_request_and_all_get_the_token() {
    let up = Upstream::start(3600, 300);
    let p = start_settings(settings(&up, CacheSettings::default())).await;
    let addr = p.addr;
    let burst = std::time::Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            // Spread over many "containers": each may hold only so many connections.
            let src = format!("127.0.{}.{}", 1 + i / 100, 2 + i % 100);
            tokio::spawn(async move { token(&src, addr, TOKEN).await })
        })
        .collect();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["access_token"], "tok-1", "{v}");
    }
    assert_eq!(up.count(), 1, "200 concurrent misses, upstream requests");
    // The proxy counts a token's life from when it asked; the upstream dates
    // `expires_on` from when it answered, later by as long as the answer took.
    let answer_took = burst.elapsed().as_secs();

    // Later requests are answered from the cache, their lifetimes counted from now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, v) = token("127.0.0.9", p.addr, TOKEN).await;
    assert_eq!((status, &v["access_token"]), (200, &"tok-1".into()));
    let left = secs(&v, "expires_in");
    assert!(
        (3590..3600).contains(&left),
        "expires_in {left} after a second"
    );
    let on = secs(&v, "expires_on") - now_unix();
    assert!(
        on.abs_diff(left) <= 1 + answer_took,
        "expires_on is {on} s away: {v}"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_identities_never_share_a_token() {
    let up = Upstream::start(3600, 200);
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
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let src = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
            let addr = p.addr;
            tokio::spawn(async move { (src, token(src, addr, TOKEN).await) })
        })
        .collect();
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
    let up = Upstream::start(3600, 0);
    up.set_failing(true);
    let p = start_settings(settings(&up, CacheSettings::default())).await;
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
    // After it, the service is asked again, and its recovery is served.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    up.set_failing(false);
    let (status, v) = token("127.0.0.2", p.addr, TOKEN).await;
    assert_eq!(status, 200, "{v}");
    assert!(up.count() > after_first);
}

#[tokio::test(flavor = "multi_thread")]
async fn bypass_cache_is_sent_once_and_then_served_from_the_cache() {
    let up = Upstream::start(3600, 0);
    let p = start_settings(settings(&up, CacheSettings::default())).await;
    let (_, first) = token("127.0.0.2", p.addr, TOKEN).await;
    assert_eq!(first["access_token"], "tok-1");
    let bypass = format!("{TOKEN}&bypass_cache=true");
    let (status, v) = token("127.0.0.2", p.addr, &bypass).await;
    assert_eq!((status, &v["access_token"]), (200, &"tok-2".into()));
    // A second bypass right after gets the token just fetched; plain requests too.
    let (_, v) = token("127.0.0.3", p.addr, &bypass).await;
    assert_eq!(v["access_token"], "tok-2");
    let (_, v) = token("127.0.0.4", p.addr, TOKEN).await;
    assert_eq!(v["access_token"], "tok-2");
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_cache_off_every_request_reaches_the_upstream() {
    let up = Upstream::start(3600, 0);
    let off = CacheSettings {
        tokens: false,
        ..CacheSettings::default()
    };
    let p = start_settings(settings(&up, off)).await;
    for i in 1..=3 {
        let (status, v) = token("127.0.0.2", p.addr, TOKEN).await;
        assert_eq!(
            (status, &v["access_token"]),
            (200, &format!("tok-{i}").into())
        );
    }
    assert_eq!(up.count(), 3);
}

/// Everything the proxy logs, for the one test that reads it.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_refresh_keeps_serving_the_valid_token_and_is_logged() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    // Four seconds of serving left: the first hit after the fill starts a refresh.
    let min = AZURE_MIN_REMAINING.as_secs();
    let up = Upstream::start(min + 4, 0);
    let p = start_settings(settings(&up, CacheSettings::default())).await;
    let (_, v) = token("127.0.0.2", p.addr, TOKEN).await;
    assert_eq!(v["access_token"], "tok-1");
    up.set_failing(true);
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        let (status, v) = token("127.0.0.2", p.addr, TOKEN).await;
        assert_eq!((status, &v["access_token"]), (200, &"tok-1".into()), "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up.count() >= 2, "a refresh was tried");
    let text = log.text();
    assert!(
        text.contains("refreshing a cached token failed"),
        "log:\n{text}"
    );
    assert!(!text.contains("tok-1"), "a token in the log:\n{text}");
    // Once it is due, it is no longer served: the caller sees the failure.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, v) = token("127.0.0.2", p.addr, TOKEN).await;
    assert_eq!(status, 500, "{v}");
}
