//! The proxy on loopback against a scripted upstream: what a container sees when the
//! upstream is healthy, down, slow, huge or broken, and what the upstream sees.
//! No root needed.

mod common;

use common::rig::{
    container, from_raw, inventory_of, labelled, read_head, request, start_settings, FakeOrigins,
    Running,
};

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use imds_proxy::proxy::{self, ProxySettings};

/// One request as the scripted upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    peer: SocketAddr,
    head: String,
    body: Vec<u8>,
    /// When its head had arrived.
    at: Instant,
}

/// Managed-identity requests the scripted upstream is answering at once: now, and the
/// most ever.
#[derive(Debug, Default)]
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

/// The scripted upstream and what it observed.
struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    identity: Arc<InFlight>,
}

impl Fake {
    /// Arrival times of the requests whose target starts with `prefix`.
    fn arrivals(&self, prefix: &str) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| {
                s.head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .starts_with(prefix)
            })
            .map(|s| s.at)
            .collect()
    }
}

/// Upstream whose behaviour is chosen by the request path.
fn upstream() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let f = fake();
    (f.addr, f.seen)
}

/// Upstream whose behaviour is chosen by the request path, and in its query:
/// `hold=<ms>` answers after a delay; `script=<step>,<step>,...` answers the n-th
/// request for the same target with the n-th step (the last one repeats), a step being
/// a status, optionally with `r<seconds>` for a `Retry-After` (`429r1`).
fn fake() -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let identity = Arc::new(InFlight::default());
    let (s, i) = (seen.clone(), identity.clone());
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            let (s, i) = (s.clone(), i.clone());
            thread::spawn(move || serve(c, s, i));
        }
    });
    Fake {
        addr,
        seen,
        identity,
    }
}

/// The answer a script step names.
fn scripted(step: &str) -> Vec<u8> {
    let (status, retry_after) = match step.split_once('r') {
        Some((s, ra)) => (s, Some(ra)),
        None => (step, None),
    };
    let status: u16 = status.parse().unwrap();
    let body = format!("scripted {status}");
    let mut head = format!("HTTP/1.1 {status} Scripted\r\nContent-Type: text/plain\r\n");
    if let Some(ra) = retry_after {
        head.push_str(&format!("Retry-After: {ra}\r\n"));
    }
    format!("{head}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn serve(c: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, identity: Arc<InFlight>) {
    use std::sync::atomic::Ordering::SeqCst;
    let peer = c.peer_addr().unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    loop {
        let Some(head) = read_head(&mut r) else {
            return;
        };
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let at = Instant::now();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let repeat = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                peer,
                head: head.clone(),
                body,
                at,
            });
            seen.iter()
                .filter(|s| s.head.split_whitespace().nth(1) == Some(path.as_str()))
                .count()
                - 1
        };
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let is_identity = path.starts_with("/metadata/identity/");
        if is_identity {
            let now = identity.now.fetch_add(1, SeqCst) + 1;
            identity.most.fetch_max(now, SeqCst);
        }
        if let Some(ms) = param("hold") {
            thread::sleep(Duration::from_millis(ms.parse().unwrap()));
        }
        // Done before the answer leaves: the proxy cannot send the next request
        // before it has this answer, so the count never includes a finished one.
        if is_identity {
            identity.now.fetch_sub(1, SeqCst);
        }
        let reply: Vec<u8> = if let Some(script) = param("script") {
            let steps: Vec<&str> = script.split(',').collect();
            scripted(steps[repeat.min(steps.len() - 1)])
        } else if let Some(ms) = path.strip_prefix("/slow/") {
            thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            ok("slow")
        } else if path == "/big" {
            let body = vec![b'x'; 5 << 20];
            let mut v =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            v.extend(body);
            v
        } else if path == "/hop" {
            b"HTTP/1.1 404 Not Found\r\nServer: EC2ws\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 9\r\n\r\nnot found"
                .to_vec()
        } else if path.starts_with("/metadata/instance") {
            let body = r#"{"compute":{"vmId":"vm-1","userData":"c2VjcmV0","customData":"eA=="},"network":{"interface":[]}}"#;
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
        } else if path == "/smuggle" {
            // Chunked framing plus a Content-Length that covers only part of the body.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n14\r\nhello-HTTP/1.1 200 X\r\n0\r\n\r\n"
                .to_vec()
        } else if path == "/truncated" {
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
            return;
        } else {
            ok(&path)
        };
        if w.write_all(&reply).is_err() {
            return;
        }
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn start(upstream: SocketAddr, timeout_ms: u64) -> Running {
    start_with(upstream, timeout_ms, None, "allow").await
}

async fn start_with(
    upstream: SocketAddr,
    timeout_ms: u64,
    inventory: Option<imds_proxy::docker::InventoryHandle>,
    unknown: &str,
) -> Running {
    let policies = imds_proxy::policy::select::Policies::builtin("allow", unknown);
    start_full(
        upstream,
        timeout_ms,
        inventory,
        policies,
        FakeOrigins::default(),
    )
    .await
}

async fn start_full(
    upstream: SocketAddr,
    timeout_ms: u64,
    inventory: Option<imds_proxy::docker::InventoryHandle>,
    policies: imds_proxy::policy::select::Policies,
    origins: FakeOrigins,
) -> Running {
    start_settings(ProxySettings {
        backend: proxy::Backend::Upstream(format!("http://{upstream}").parse().unwrap()),
        request_timeout: Duration::from_millis(timeout_ms),
        aws_request_timeout: Duration::from_millis(timeout_ms),
        upstream_limits: Default::default(),
        cache: Default::default(),
        max_body_bytes: 1024,
        max_header_bytes: 8192,
        inventory,
        identify_wait: Duration::from_millis(300),
        origins: Arc::new(origins),
        policies: tokio::sync::watch::channel(Arc::new(policies)).1,
    })
    .await
}

/// Sends raw bytes, reads until close; returns the answer and the time it took.
async fn raw(addr: SocketAddr, req: Vec<u8>) -> (Result<common::Answer, std::io::Error>, Duration) {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = (|| {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(&req)?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            common::parse_answer(&buf)
        })();
        (r, t.elapsed())
    })
    .await
    .unwrap()
}

fn get(path: &str) -> Vec<u8> {
    // What each provider's clients send (each service ignores the others' header).
    format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

fn json_error(a: &common::Answer) -> String {
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("application/json"),
        "{a:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&a.body).expect("JSON body");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_crosses_intact_minus_hop_by_hop_and_with_nothing_added() {
    let (up, seen) = upstream();
    let p = start(up, 2000).await;
    let req = b"POST /metadata/scheduledevents?x=1&y=%2F HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nAccept: a\r\nAccept: b\r\nConnection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=1\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    let (a, _) = raw(p.addr, req).await;
    assert_eq!(a.unwrap().status, 200);
    let s = seen.lock().unwrap().last().cloned().unwrap();
    let head = s.head.to_ascii_lowercase();
    assert!(
        head.starts_with("post /metadata/scheduledevents?x=1&y=%2f http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("host: 169.254.169.254\r\n"), "{head}");
    assert!(head.contains("metadata: true\r\n"), "{head}");
    assert!(
        head.contains("accept: a\r\n") && head.contains("accept: b\r\n"),
        "{head}"
    );
    assert_eq!(s.body, b"hello");
    for gone in [
        "x-secret-hop",
        "keep-alive",
        "te:",
        "proxy-authorization",
        "x-forwarded-for",
        "forwarded",
        "via:",
    ] {
        assert!(!head.contains(gone), "{gone} in {head}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_status_and_headers_reach_the_container_without_hop_by_hop_ones() {
    let (up, _) = upstream();
    let p = start(up, 2000).await;
    let a = raw(p.addr, get("/hop")).await.0.unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(a.body, "not found");
    assert_eq!(a.headers.get("server").map(String::as_str), Some("EC2ws"));
    assert_eq!(a.headers.get("x-kept").map(String::as_str), Some("yes"));
    assert!(
        !a.headers.contains_key("x-hop") && !a.headers.contains_key("keep-alive"),
        "{a:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_a_prompt_502_naming_the_cause() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // closed again at once
    let p = start(dead, 5000).await;
    let (a, took) = raw(p.addr, get("/latest/meta-data/")).await;
    let a = a.unwrap();
    assert_eq!(a.status, 502);
    assert_eq!(json_error(&a), "upstream_unreachable");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_a_504_at_the_deadline_not_a_hang() {
    let (up, _) = upstream();
    let p = start(up, 400).await;
    let (a, took) = raw(p.addr, get("/slow/3000")).await;
    let a = a.unwrap();
    assert_eq!(a.status, 504);
    assert_eq!(json_error(&a), "upstream_timeout");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_or_oversized_upstream_answers_are_502() {
    let (up, _) = upstream();
    let p = start(up, 3000).await;
    let a = raw(p.addr, get("/truncated")).await.0.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (502, "upstream_failed")
    );
    let a = raw(p.addr, get("/big")).await.0.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (502, "upstream_response_too_large")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_are_refused_without_reaching_upstream() {
    let (up, seen) = upstream();
    let p = start(up, 2000).await;
    let body = vec![b'a'; 4096];
    let mut req = format!(
        "POST /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend(body);
    let a = raw(p.addr, req).await.0.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (413, "request_too_large")
    );

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    )
    .into_bytes();
    let (a, took) = raw(p.addr, huge).await;
    assert_eq!(a.unwrap().status, 431);
    assert!(took < Duration::from_secs(2));

    let a = raw(
        p.addr,
        b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n".to_vec(),
    )
    .await
    .0
    .unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (405, "method_not_allowed")
    );

    let (a, _) = raw(p.addr, b"GARBAGE\r\n\r\n".to_vec()).await;
    assert_eq!(a.unwrap().status, 400);
    assert!(
        seen.lock().unwrap().is_empty(),
        "upstream saw a refused request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_client_is_dropped_instead_of_holding_a_connection() {
    let (up, _) = upstream();
    let p = start(up, 2000).await;
    let addr = p.addr;
    let took = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").unwrap(); // never finishes the head
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        t.elapsed()
    })
    .await
    .unwrap();
    assert!(
        took < Duration::from_secs(8),
        "stalled client held for {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused() {
    let (up, seen) = upstream();
    let p = start(up, 2000).await;
    for i in 0..5 {
        assert_eq!(
            raw(p.addr, get(&format!("/n/{i}"))).await.0.unwrap().status,
            200
        );
    }
    let peers: std::collections::HashSet<SocketAddr> =
        seen.lock().unwrap().iter().map(|s| s.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "5 sequential requests used {} upstream connections",
        peers.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_in_flight_requests_and_accepts_no_new_ones() {
    let (up, _) = upstream();
    let mut p = start(up, 5000).await;
    let addr = p.addr;
    let slow = tokio::spawn(raw(addr, get("/slow/800")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.stop.take().unwrap().send(()).unwrap();
    let (a, took) = slow.await.unwrap();
    assert_eq!(a.unwrap().status, 200, "in-flight request cut");
    assert!(took >= Duration::from_millis(800));
    let report = p.done.await.unwrap();
    assert_eq!(report.abandoned, 0);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_upstream_framing_cannot_desync_the_container_connection() {
    let (up, _) = upstream();
    let p = start(up, 2000).await;
    let a = raw(p.addr, get("/smuggle")).await.0.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body, "hello-HTTP/1.1 200 X",
        "the whole decoded body, framed by its real length"
    );
    assert_eq!(
        a.headers.get("content-length").map(String::as_str),
        Some("20")
    );
    assert!(!a.headers.contains_key("transfer-encoding"));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_take_every_connection() {
    let (up, _) = upstream();
    let p = start(up, 2000).await;
    let addr = p.addr;
    // One client holds its whole allowance with heads it never finishes...
    let mut held = Vec::new();
    for _ in 0..proxy::MAX_CONNECTIONS_PER_CLIENT {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...its next connection is closed at once...
    let (r, took) = raw(addr, get("/one-too-many")).await;
    assert!(r.is_err(), "over-limit connection was served: {r:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // ...while another container (another source address) is still served.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = other.connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&get("/other-client")).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert_eq!(common::parse_answer(&buf).unwrap().status, 200);
    // Releasing connections gives the first client its place back.
    held.clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(raw(addr, get("/again")).await.0.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_slow_to_send_its_body_gets_408_not_a_blamed_upstream() {
    let (up, seen) = upstream();
    let p = start(up, 400).await;
    let addr = p.addr;
    let (a, took) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"PUT /latest/api/token HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        (common::parse_answer(&buf), t.elapsed())
    })
    .await
    .unwrap();
    let a = a.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (408, "request_timeout")
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_receives_the_canonical_path_and_hostile_paths_go_nowhere() {
    let (up, seen) = upstream();
    let p = start(up, 2000).await;
    let a = raw(
        p.addr,
        get("//metadata/identity\\oauth2/./x/../token?resource=a%2Fb"),
    )
    .await
    .0
    .unwrap();
    assert_eq!(a.status, 200);
    let first_line = seen
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .head
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        first_line,
        "GET /metadata/identity/oauth2/token?resource=a%2Fb HTTP/1.1"
    );

    let before = seen.lock().unwrap().len();
    for hostile in [
        "/latest/meta-data/iam%00x",
        "/metadata/identity/oauth2/token.",
        "/a/%zz",
    ] {
        let a = raw(p.addr, get(hostile)).await.0.unwrap();
        assert_eq!(
            (a.status, json_error(&a).as_str()),
            (400, "bad_request_path"),
            "{hostile}"
        );
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "a hostile path reached the upstream"
    );
}

/// A request from a chosen loopback address (each stands for one container).
async fn from(src: &str, addr: SocketAddr, path: &str) -> common::Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(&get(path)).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    common::parse_answer(&buf).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_container_gets_its_labelled_policy_in_the_providers_shape() {
    let (up, seen) = upstream();
    let inventory = inventory_of(
        &[
            container('a', "127.0.0.2", "metadata-only"),
            container('b', "127.0.0.3", "deny"),
        ],
        false,
    );
    let p = start_with(up, 2000, Some(inventory), "deny").await;

    // metadata-only: metadata yes, credentials no (AWS-shaped refusal).
    assert_eq!(
        from("127.0.0.2", p.addr, "/latest/meta-data/instance-id")
            .await
            .status,
        200
    );
    let a = from(
        "127.0.0.2",
        p.addr,
        "/latest/meta-data/iam/security-credentials/role",
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("text/plain")
    );
    assert!(
        a.body
            .contains("policy metadata-only: deny /*/meta-data/iam/security-credentials/**"),
        "{a:?}"
    );
    // The Azure instance document arrives without the user data it embeds.
    let a = from(
        "127.0.0.2",
        p.addr,
        "/metadata/instance?api-version=2021-02-01",
    )
    .await;
    assert_eq!(a.status, 200);
    let doc: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(doc["compute"]["vmId"], "vm-1");
    assert!(
        doc["compute"].get("userData").is_none() && doc["compute"].get("customData").is_none(),
        "{doc}"
    );
    // deny: nothing.
    let a = from("127.0.0.3", p.addr, "/latest/meta-data/instance-id").await;
    assert_eq!(a.status, 403);
    // An address no container holds: the unknown-caller policy (deny here).
    let a = from("127.0.0.4", p.addr, "/").await;
    assert_eq!((a.status, json_error(&a).as_str()), (403, "forbidden"));
    let upstream_saw: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.head.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        upstream_saw,
        [
            // The proxy's own IMDSv2 session with the upstream, then the one AWS
            // request it allowed: containers never see the upstream's token.
            "PUT /latest/api/token HTTP/1.1",
            "GET /latest/meta-data/instance-id HTTP/1.1",
            "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_source_address_gets_no_identity_and_an_unreported_port_is_told_to_retry() {
    // 127.0.0.2 as a source address, but from b's bridge port: b forging a's address.
    let origins = FakeOrigins {
        forged: [("127.0.0.2".parse().unwrap(), 3)].into(),
        ..Default::default()
    };
    let (p, seen, a) = a_asks_for_credentials_beside_b(origins, "allow").await;
    assert_eq!(a.status, 403, "{a:?}");
    assert!(
        a.body
            .contains("source address 127.0.0.2 is not the calling container's"),
        "{a:?}"
    );
    // A port Docker has not reported: a bounded wait, then 503 with Retry-After, even
    // though the unknown-caller policy here is allow.
    let t = Instant::now();
    let a = from("127.0.0.7", p.addr, "/latest/meta-data/").await;
    let waited = t.elapsed();
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.headers.get("retry-after").map(String::as_str), Some("1"));
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "waited {waited:?}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    // The host itself: the host policy (allow).
    assert_eq!(
        from("127.0.0.1", p.addr, "/latest/meta-data/").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_policy_answers_429_with_retry_after_per_container() {
    let (up, seen) = upstream();
    let mut policies = imds_proxy::policy::select::Policies::builtin("allow", "deny");
    let mut limited = imds_proxy::policy::Policy::builtin("allow").unwrap();
    limited.name = "limited".into();
    limited.rate_limit = Some("1/min burst 2".parse().unwrap());
    policies.named.insert("limited".into(), limited);
    let list = [
        container('a', "127.0.0.2", "limited"),
        container('b', "127.0.0.3", "limited"),
    ];
    let inventory = inventory_of(&list, false);
    let p = start_full(up, 2000, Some(inventory), policies, FakeOrigins::default()).await;
    let path = "/computeMetadata/v1/project/project-id";
    for _ in 0..2 {
        assert_eq!(from("127.0.0.2", p.addr, path).await.status, 200);
    }
    let a = from("127.0.0.2", p.addr, path).await;
    assert_eq!(a.status, 429, "{a:?}");
    // The provider's own shape (GCE here), with a wait the container can honour.
    assert_eq!(
        a.headers.get("metadata-flavor").map(String::as_str),
        Some("Google")
    );
    let wait: u64 = a.headers.get("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert!(
        a.body
            .contains("rate limit 1/min burst 2 of limited exceeded"),
        "{a:?}"
    );
    // Another container with the same policy has its own budget.
    assert_eq!(from("127.0.0.3", p.addr, path).await.status, 200);
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "the refused request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_taken_over_from_another_port_is_refused_and_closed() {
    // a's connection, then (as if b poisoned the bridge and injected segments) coming
    // in by b's port 3.
    let origins = FakeOrigins {
        taken_over: [("127.0.0.2".parse().unwrap(), 3)].into(),
        ..Default::default()
    };
    let (_p, seen, a) = a_asks_for_credentials_beside_b(origins, "deny").await;
    assert_eq!(a.status, 403, "{a:?}");
    assert!(
        a.body
            .contains("the connection was opened from Port(2) but this request came from Port(3)"),
        "{a:?}"
    );
    assert_eq!(
        a.headers.get("connection").map(String::as_str),
        Some("close")
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
}

/// Containers a (127.0.0.2, port 2, allow) and b (127.0.0.3, port 3, deny) behind a
/// proxy whose connection origins are `origins`; a asks for credentials.
async fn a_asks_for_credentials_beside_b(
    origins: FakeOrigins,
    unknown: &str,
) -> (Running, Arc<Mutex<Vec<Seen>>>, common::Answer) {
    let (up, seen) = upstream();
    let list = [
        container('a', "127.0.0.2", "allow"),
        container('b', "127.0.0.3", "deny"),
    ];
    let policies = imds_proxy::policy::select::Policies::builtin("allow", unknown);
    let p = start_full(up, 2000, Some(inventory_of(&list, true)), policies, origins).await;
    let a = from(
        "127.0.0.2",
        p.addr,
        "/latest/meta-data/iam/security-credentials/role",
    )
    .await;
    (p, seen, a)
}

fn heads(seen: &Mutex<Vec<Seen>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|s| s.head.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_session_tokens_are_issued_on_the_host_and_good_only_for_their_container() {
    let (up, seen) = upstream();
    let list = [
        labelled('a', "127.0.0.2", &[]),
        labelled('b', "127.0.0.3", &[]),
        labelled('c', "127.0.0.4", &[("imds-proxy.policy", "v2only")]),
    ];
    let mut policies = imds_proxy::policy::select::Policies::builtin("allow", "deny");
    let mut v2only = imds_proxy::policy::Policy::builtin("allow").unwrap();
    v2only.name = "v2only".into();
    v2only.aws_tokens_required = true;
    policies.named.insert("v2only".into(), v2only);
    let p = start_full(
        up,
        2000,
        Some(inventory_of(&list, false)),
        policies,
        FakeOrigins::default(),
    )
    .await;
    let ttl = ("X-aws-ec2-metadata-token-ttl-seconds", "21600");
    let a = from_raw(
        "127.0.0.2",
        p.addr,
        request("PUT", "/latest/api/token", &[ttl]),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .map(String::as_str),
        Some("21600")
    );
    let token = a.body.clone();
    assert!(
        heads(&seen).is_empty(),
        "the container's PUT never reaches the upstream"
    );
    for (ttl, status) in [("0", 400), ("21601", 400), ("soon", 400)] {
        let r = request(
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", ttl)],
        );
        assert_eq!(
            from_raw("127.0.0.2", p.addr, r).await.status,
            status,
            "ttl {ttl}"
        );
    }
    let relayed = request(
        "PUT",
        "/latest/api/token",
        &[ttl, ("X-Forwarded-For", "10.0.0.9")],
    );
    assert_eq!(from_raw("127.0.0.2", p.addr, relayed).await.status, 403);

    let md = "/latest/meta-data/instance-id";
    let with_token = request("GET", md, &[("X-aws-ec2-metadata-token", &token)]);
    assert_eq!(
        from_raw("127.0.0.2", p.addr, with_token.clone())
            .await
            .status,
        200
    );
    // The upstream saw the proxy's own session, never the container's token.
    let h = heads(&seen);
    assert!(h[0].starts_with("PUT /latest/api/token HTTP/1.1"), "{h:?}");
    let get = h[1].to_ascii_lowercase();
    assert!(
        get.starts_with("get /latest/meta-data/instance-id"),
        "{get}"
    );
    assert!(
        get.contains("x-aws-ec2-metadata-token: /latest/api/token\r\n"),
        "{get}"
    );
    assert!(!get.contains(&token.to_ascii_lowercase()), "{get}");
    // Another container cannot use it, nor can anyone use a made-up one.
    let b = from_raw("127.0.0.3", p.addr, with_token).await;
    assert_eq!((b.status, b.body.as_str()), (401, "Unauthorized\n"));
    let junk = request(
        "GET",
        md,
        &[("X-aws-ec2-metadata-token", "AQAEAFakeToken==")],
    );
    assert_eq!(from_raw("127.0.0.2", p.addr, junk).await.status, 401);
    // IMDSv1 works where the policy allows it, and not where it requires tokens.
    assert_eq!(
        from_raw("127.0.0.3", p.addr, request("GET", md, &[]))
            .await
            .status,
        200
    );
    assert_eq!(
        from_raw("127.0.0.4", p.addr, request("GET", md, &[]))
            .await
            .status,
        401
    );
    let c = from_raw(
        "127.0.0.4",
        p.addr,
        request("PUT", "/latest/api/token", &[ttl]),
    )
    .await;
    let r = request("GET", md, &[("X-aws-ec2-metadata-token", &c.body)]);
    assert_eq!(from_raw("127.0.0.4", p.addr, r).await.status, 200);
    assert_eq!(
        heads(&seen).iter().filter(|h| h.starts_with("PUT")).count(),
        1,
        "one session, reused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_pinned_to_an_azure_identity_gets_it_and_no_other() {
    let (up, seen) = upstream();
    let list = [
        labelled(
            'a',
            "127.0.0.2",
            &[("imds-proxy.azure.client-id", "aaaa-1111")],
        ),
        labelled('b', "127.0.0.3", &[]),
    ];
    let p = start_full(
        up,
        2000,
        Some(inventory_of(&list, false)),
        imds_proxy::policy::select::Policies::builtin("allow", "deny"),
        FakeOrigins::default(),
    )
    .await;
    let t = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com";
    let md = [("Metadata", "true")];
    assert_eq!(
        from_raw("127.0.0.2", p.addr, request("GET", t, &md))
            .await
            .status,
        200
    );
    let h = heads(&seen);
    assert!(
        h[0].starts_with(&format!("GET {t}&client_id=aaaa-1111 HTTP/1.1")),
        "{h:?}"
    );
    let other = format!("{t}&client_id=bbbb-2222");
    let a = from_raw("127.0.0.2", p.addr, request("GET", &other, &md)).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            400,
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#
        )
    );
    // An unpinned container asks for what it wants, as on the instance itself.
    assert_eq!(
        from_raw("127.0.0.3", p.addr, request("GET", &other, &md))
            .await
            .status,
        200
    );
    // The SDK's probe (no Metadata header) gets IMDS's own answer, from the proxy.
    let probe = from_raw("127.0.0.3", p.addr, request("GET", t, &[])).await;
    assert_eq!(probe.status, 400);
    assert_eq!(
        probe.body,
        r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#
    );
    assert_eq!(
        heads(&seen).len(),
        2,
        "refusals never reach the upstream: {:?}",
        heads(&seen)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_pinned_to_a_gce_account_sees_it_as_default_and_no_other() {
    let (up, seen) = upstream();
    let me = "me@p.iam.gserviceaccount.com";
    let list = [labelled(
        'a',
        "127.0.0.2",
        &[("imds-proxy.gce.service-account", me)],
    )];
    let p = start_full(
        up,
        2000,
        Some(inventory_of(&list, false)),
        imds_proxy::policy::select::Policies::builtin("allow", "deny"),
        FakeOrigins::default(),
    )
    .await;
    let sa = "/computeMetadata/v1/instance/service-accounts";
    let flavor = [("Metadata-Flavor", "Google")];
    let a = from_raw(
        "127.0.0.2",
        p.addr,
        request("GET", &format!("{sa}/default/token?scopes=s"), &flavor),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(
        heads(&seen)[0].starts_with(&format!(
            "GET {sa}/me@p.iam.gserviceaccount.com/token?scopes=s HTTP/1.1"
        )),
        "{:?}",
        heads(&seen)
    );
    let a = from_raw(
        "127.0.0.2",
        p.addr,
        request(
            "GET",
            &format!("{sa}/boss@p.iam.gserviceaccount.com/token"),
            &flavor,
        ),
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(
        a.headers.get("metadata-flavor").map(String::as_str),
        Some("Google")
    );
    let a = from_raw(
        "127.0.0.2",
        p.addr,
        request("GET", &format!("{sa}/default/token"), &[]),
    )
    .await;
    assert_eq!(a.status, 403, "no Metadata-Flavor header");
    assert_eq!(heads(&seen).len(), 1);
}

/// A proxy (every caller the host, policy allow) in front of `up` with these upstream
/// limits; AWS requests get `aws_ms`, the others `timeout_ms`.
async fn start_protected(
    up: SocketAddr,
    timeout_ms: u64,
    aws_ms: u64,
    limits: proxy::protect::Limits,
) -> Running {
    let policies = imds_proxy::policy::select::Policies::builtin("allow", "allow");
    start_settings(ProxySettings {
        backend: proxy::Backend::Upstream(format!("http://{up}").parse().unwrap()),
        request_timeout: Duration::from_millis(timeout_ms),
        aws_request_timeout: Duration::from_millis(aws_ms),
        upstream_limits: limits,
        cache: Default::default(),
        max_body_bytes: 1024,
        max_header_bytes: 8192,
        inventory: None,
        identify_wait: Duration::ZERO,
        origins: Arc::new(FakeOrigins::default()),
        policies: tokio::sync::watch::channel(Arc::new(policies)).1,
    })
    .await
}

/// How many requests for exactly `target` the upstream saw.
fn attempts(seen: &Mutex<Vec<Seen>>, target: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.head.split_whitespace().nth(1) == Some(target))
        .count()
}

/// Sends every request at once and returns the answers.
async fn all_at_once(addr: SocketAddr, reqs: Vec<Vec<u8>>) -> Vec<common::Answer> {
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|r| tokio::spawn(raw(addr, r)))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().0.expect("every caller gets an answer"));
    }
    out
}

const TOKEN: &str =
    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_never_sees_more_than_its_rate_and_every_caller_is_answered() {
    let f = fake();
    let mut limits = proxy::protect::Limits::default();
    let limit: imds_proxy::policy::RateLimit = "5/s".parse().unwrap();
    limits.set_rate(proxy::protect::Class::AzureIdentity, limit);
    let p = start_protected(f.addr, 2000, 2000, limits).await;
    // Forty different requests (a parameter the cache does not know keeps each its own),
    // so coalescing cannot hide what the rate limit does.
    let answers = all_at_once(
        p.addr,
        (0..40).map(|i| get(&format!("{TOKEN}&n={i}"))).collect(),
    )
    .await;

    let mut arrivals = f.arrivals("/metadata/identity/");
    arrivals.sort();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(ok, arrivals.len(), "one upstream request per success");
    assert!(ok >= limit.burst() as usize, "{ok} succeeded");
    // At most burst + rate × time between any two of them (the arrival times carry
    // a loaded machine's scheduling noise: 100 ms of it are allowed).
    for i in 0..arrivals.len() {
        for j in i + 1..arrivals.len() {
            let span = arrivals[j] - arrivals[i] + Duration::from_millis(100);
            let allowed = limit.burst() as f64 + 5.0 * span.as_secs_f64();
            assert!(
                (j - i + 1) as f64 <= allowed,
                "{} requests reached the upstream within {:?}",
                j - i + 1,
                arrivals[j] - arrivals[i]
            );
        }
    }
    // The rest were told by the proxy, in Azure's shape, when to come back.
    let refused: Vec<_> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        !refused.is_empty(),
        "40 requests cannot all fit in 2 s at 5/s"
    );
    for a in refused {
        assert_eq!(a.status, 429, "{a:?}");
        assert_eq!(
            a.headers.get("content-type").map(String::as_str),
            Some("application/json; charset=utf-8")
        );
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["error"], "too_many_requests", "{a:?}");
        assert!(v["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
        let wait: u64 = a.headers["retry-after"].parse().unwrap();
        assert!(wait >= 1, "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_more_than_five_identity_requests_are_ever_in_flight() {
    let f = fake();
    let mut limits = proxy::protect::Limits::default();
    // The rate out of the way: only the cap on requests in flight (5) applies.
    limits.set_rate(
        proxy::protect::Class::AzureIdentity,
        "1000/s".parse().unwrap(),
    );
    let p = start_protected(f.addr, 5000, 5000, limits).await;
    let reqs = (0..40)
        .map(|i| get(&format!("{TOKEN}&hold=150&n={i}")))
        .collect();
    let answers = all_at_once(p.addr, reqs).await;
    // 40 requests of 150 ms, 5 at a time, fit well in 5 s: all are served.
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    assert_eq!(f.arrivals("/metadata/identity/").len(), 40);
    // Five at a time, not fewer: a proxy that sent them one by one would also keep
    // under the cap, and take 6 s.
    let most = f.identity.most.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(most, 5, "identity requests in flight at once at the most");
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_and_refusals_are_not() {
    let f = fake();
    let p = start_protected(f.addr, 3000, 3000, Default::default()).await;
    let gce = "/computeMetadata/v1/instance/id";
    // (method, target, status the caller gets, upstream attempts)
    let cases = [
        ("GET", format!("{gce}?script=503,503,200"), 200, 1 + 2),
        ("GET", format!("{gce}?script=500,502,504,200"), 200, 4),
        ("GET", format!("{gce}?script=503"), 503, 4),
        ("GET", format!("{gce}?script=404,200"), 404, 1),
        ("GET", format!("{gce}?script=403,200"), 403, 1),
        ("GET", format!("{gce}?script=400,200"), 400, 1),
        (
            "GET",
            "/metadata/instance?api-version=2021-02-01&script=410,200".into(),
            200,
            2,
        ),
        (
            "GET",
            "/latest/meta-data/ami-id?script=405,200".into(),
            405,
            1,
        ),
        // Azure's approval of a scheduled event acts: sent once, whatever it answers.
        (
            "POST",
            "/metadata/scheduledevents?api-version=2020-07-01&script=500,200".into(),
            500,
            1,
        ),
    ];
    for (method, target, status, tries) in cases {
        let a = from_raw(
            "127.0.0.1",
            p.addr,
            request(
                method,
                &target,
                &[("Metadata", "true"), ("Metadata-Flavor", "Google")],
            ),
        )
        .await;
        assert_eq!(a.status, status, "{method} {target}: {a:?}");
        if status != 200 {
            // The upstream's own answer, not one of the proxy's.
            assert_eq!(a.body, format!("scripted {status}"), "{target}");
        }
        assert_eq!(attempts(&f.seen, &target), tries, "{method} {target}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_waits_as_long_as_the_upstreams_retry_after_says() {
    let f = fake();
    let p = start_protected(f.addr, 3000, 3000, Default::default()).await;
    let target = "/computeMetadata/v1/project/project-id?script=429r1,200";
    assert_eq!(raw(p.addr, get(target)).await.0.unwrap().status, 200);
    let at = f.arrivals(target);
    assert_eq!(at.len(), 2);
    assert!(
        at[1] - at[0] >= Duration::from_secs(1),
        "the retry came {:?} after the 429",
        at[1] - at[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_attempt_is_started_that_the_deadline_cannot_fit() {
    let f = fake();
    let p = start_protected(f.addr, 800, 800, Default::default()).await;
    let gce = "/computeMetadata/v1/instance/hostname";
    // The service asks for more time than the caller has: its answer is the answer.
    for (target, status, retry_after) in [
        (format!("{gce}?script=503r5,200"), 503, "5"),
        (format!("{gce}?script=429r1,200"), 429, "1"),
    ] {
        let a = raw(p.addr, get(&target)).await.0.unwrap();
        assert_eq!(
            (a.status, a.body.as_str()),
            (status, format!("scripted {status}").as_str())
        );
        assert_eq!(
            a.headers.get("retry-after").map(String::as_str),
            Some(retry_after)
        );
        assert_eq!(attempts(&f.seen, &target), 1, "{target}");
    }
    // A hung attempt is tried again on a fresh connection while time allows; then the
    // caller gets the proxy's timeout answer.
    let target = format!("{gce}?hold=1500");
    let a = raw(p.addr, get(&target)).await.0.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (504, "upstream_timeout")
    );
    let tries = attempts(&f.seen, &target);
    assert!((2..=4).contains(&tries), "{tries} attempts");
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_requests_have_their_own_shorter_deadline() {
    let f = fake();
    let p = start_protected(f.addr, 3000, 300, Default::default()).await;
    let slow_aws = raw(p.addr, get("/latest/meta-data/instance-id?hold=600"))
        .await
        .0
        .unwrap();
    assert_eq!(
        (slow_aws.status, json_error(&slow_aws).as_str()),
        (504, "upstream_timeout")
    );
    let slow_gce = raw(p.addr, get("/computeMetadata/v1/instance/id?hold=600"))
        .await
        .0
        .unwrap();
    assert_eq!(slow_gce.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxys_own_session_put_takes_from_the_aws_budget() {
    let f = fake();
    let mut limits = proxy::protect::Limits::default();
    limits.set_rate(proxy::protect::Class::Aws, "1/min burst 1".parse().unwrap());
    let p = start_protected(f.addr, 2000, 900, limits).await;
    let a = raw(p.addr, get("/latest/meta-data/ami-id"))
        .await
        .0
        .unwrap();
    // The PUT took the one request of this minute: the GET is refused, AWS-shaped.
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("text/plain")
    );
    assert!(
        a.body.starts_with("Too Many Requests: imds-proxy: "),
        "{a:?}"
    );
    let wait: u64 = a.headers["retry-after"].parse().unwrap();
    assert!((55..=60).contains(&wait), "Retry-After {wait}");
    let seen: Vec<String> = heads(&f.seen)
        .iter()
        .map(|h| h.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["PUT /latest/api/token HTTP/1.1"]);
}
