//! The one fake metadata service of every tier: an HTTP/1.1 server on threads of its
//! own, in a test's namespace or on loopback, that records every request it gets, counts
//! them and answers as the test scripts it.
//!
//! Unscripted, it answers like no cloud in particular:
//! - a JSON echo naming itself (`"served_by":"fake-imds"`), the port and the target,
//!   with a fresh secret `Token` for credential paths (`.../security-credentials/...`,
//!   `.../token`);
//! - a session token for AWS's `PUT /latest/api/token`;
//! - an Azure instance document, with the user data the proxy must strip, for
//!   `/metadata/instance`.
//!
//! Every credential it hands out is recorded ([`FakeImds::issued`], and the suite's
//! `IMDS_PROXY_ISSUED_FILE`), so that a test can check that none reaches a log.
//!
//! One request is scripted by its path and query:
//! - `/slow/<ms>` or `hold=<ms>`: answered after a delay;
//! - `script=<step>,<step>,...`: the n-th request for the same target gets the n-th
//!   step (the last one repeats); a step is a status, optionally with `r<seconds>` for a
//!   `Retry-After` (`429r1`);
//! - `/big` (5 MiB), `/hop` (a 404 with hop-by-hop headers), `/smuggle` (chunked framing
//!   and a Content-Length that disagree), `/truncated` (closed in mid-body).
//!
//! Every request from then on is scripted by [`FakeImds::issue_azure_tokens`],
//! [`FakeImds::fail`] and [`FakeImds::hold`].

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::read_head;
use crate::{append_to_env_file, Netns};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub peer: SocketAddr,
    /// The port it came in on.
    pub port: u16,
    pub method: String,
    pub target: String,
    /// In the order received, repeated names repeated.
    pub headers: Vec<(String, String)>,
    /// The request line and header lines as received.
    pub head: String,
    pub body: Vec<u8>,
    /// When its head and body had arrived.
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request line, as `GET /path HTTP/1.1`.
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }
}

/// The fake metadata service; clones share it.
#[derive(Clone)]
pub struct FakeImds {
    state: Arc<State>,
    addrs: Vec<SocketAddr>,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    issued: Mutex<Vec<String>>,
    script: Mutex<Script>,
    /// Whether answers are held back ([`FakeImds::hold`]).
    held: (Mutex<bool>, Condvar),
    /// Managed-identity requests being answered now, and the most ever at once.
    identity_now: AtomicUsize,
    identity_most: AtomicUsize,
    /// Tells this fake's secrets from any other's.
    id: u64,
}

/// What every request is answered with, from now on.
#[derive(Debug, Clone, Default)]
struct Script {
    /// Azure managed-identity token requests get a token living this long.
    azure_token_life: Option<Duration>,
    /// Every request gets a 500.
    failing: bool,
}

/// Answers stay held back while this lives ([`FakeImds::hold`]).
pub struct Held {
    state: Arc<State>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (held, changed) = &self.state.held;
        *held.lock().unwrap() = false;
        changed.notify_all();
    }
}

impl FakeImds {
    /// Serves on each of `addrs` (say `169.254.169.254:80`) inside `ns`.
    pub fn start(ns: &Netns, addrs: &[&str]) -> Self {
        let listeners = addrs
            .iter()
            .map(|a| {
                let a: SocketAddr = a.parse().unwrap();
                ns.run(move || TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}")))
            })
            .collect();
        Self::serve(listeners)
    }

    /// Serves on a free port of 127.0.0.1, in the test's own namespace.
    pub fn loopback() -> Self {
        Self::serve(vec![TcpListener::bind("127.0.0.1:0").unwrap()])
    }

    fn serve(listeners: Vec<TcpListener>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let state = Arc::new(State {
            id: NEXT_ID.fetch_add(1, SeqCst),
            ..State::default()
        });
        let mut addrs = Vec::new();
        for listener in listeners {
            let addr = listener.local_addr().unwrap();
            addrs.push(addr);
            let state = state.clone();
            thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let state = state.clone();
                    thread::spawn(move || state.serve(conn, addr.port()));
                }
            });
        }
        Self { state, addrs }
    }

    /// The (first) address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// `http://` and its (first) address: an upstream for the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// From now on, Azure managed-identity token requests
    /// (`/metadata/identity/oauth2/token`) get a token in Azure's shape living `life`,
    /// for the identity asked for, rather than the echo.
    pub fn issue_azure_tokens(&self, life: Duration) {
        self.state.script.lock().unwrap().azure_token_life = Some(life);
    }

    /// From now on (until called with `false`), every request gets a 500.
    pub fn fail(&self, failing: bool) {
        self.state.script.lock().unwrap().failing = failing;
    }

    /// Holds every answer back until the returned guard is dropped: requests are still
    /// received and recorded, so a test can see them arrive.
    pub fn hold(&self) -> Held {
        *self.state.held.0.lock().unwrap() = true;
        Held {
            state: self.state.clone(),
        }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// Requests other than the proxy's own IMDSv2 session PUTs: what callers caused.
    pub fn relayed_count(&self) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !(s.method == "PUT" && s.target == "/latest/api/token"))
            .count()
    }

    pub fn last(&self) -> Seen {
        self.state
            .seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the fake metadata service saw no request")
    }

    /// The request line of every request so far.
    pub fn request_lines(&self) -> Vec<String> {
        let seen = self.state.seen.lock().unwrap();
        seen.iter().map(|s| s.request_line().to_owned()).collect()
    }

    /// How many requests for exactly `target` it got.
    pub fn attempts(&self, target: &str) -> usize {
        let seen = self.state.seen.lock().unwrap();
        seen.iter().filter(|s| s.target == target).count()
    }

    /// When the requests whose target starts with `prefix` arrived.
    pub fn arrivals(&self, prefix: &str) -> Vec<Instant> {
        let seen = self.state.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.target.starts_with(prefix))
            .map(|s| s.at)
            .collect()
    }

    /// The most managed-identity requests it was answering at once.
    pub fn most_identity_requests_at_once(&self) -> usize {
        self.state.identity_most.load(SeqCst)
    }

    /// The credentials handed out so far.
    pub fn issued(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().clone()
    }

    /// The secret it hands out for its `n`-th request (counting from 1), if that
    /// request is for a credential.
    pub fn secret(&self, n: usize) -> String {
        self.state.secret(n)
    }
}

impl State {
    fn secret(&self, n: usize) -> String {
        format!("SECRET-{:x}-{:x}-{n}", std::process::id(), self.id)
    }

    /// Records and hands out the secret of request `n`.
    fn issue(&self, n: usize) -> String {
        let secret = self.secret(n);
        self.issued.lock().unwrap().push(secret.clone());
        append_to_env_file("IMDS_PROXY_ISSUED_FILE", &secret);
        secret
    }

    fn serve(&self, conn: TcpStream, port: u16) {
        let peer = conn.peer_addr().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut writer = conn;
        while let Some(seen) = read_request(&mut reader, peer, port) {
            let close = seen
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let identity = seen.target.starts_with("/metadata/identity/");
            let (n, repeat) = {
                let mut all = self.seen.lock().unwrap();
                let repeat = all.iter().filter(|s| s.target == seen.target).count();
                all.push(seen.clone());
                (all.len(), repeat)
            };
            if identity {
                let now = self.identity_now.fetch_add(1, SeqCst) + 1;
                self.identity_most.fetch_max(now, SeqCst);
            }
            let delay = param(&seen.target, "hold")
                .or_else(|| seen.target.strip_prefix("/slow/").map(str::to_owned))
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis);
            if let Some(delay) = delay {
                thread::sleep(delay);
            }
            self.wait_while_held();
            // Done before the answer leaves: the proxy cannot send its next request
            // before it has this answer, so the count never includes a finished one.
            if identity {
                self.identity_now.fetch_sub(1, SeqCst);
            }
            let (reply, then_close) = self.answer(&seen, n, repeat);
            if writer.write_all(&reply).is_err() || close || then_close {
                return;
            }
        }
    }

    fn wait_while_held(&self) {
        let (held, changed) = &self.held;
        let mut h = held.lock().unwrap();
        while *h {
            h = changed.wait(h).unwrap();
        }
    }

    /// The answer to request number `n`, the `repeat`-th before it for the same target;
    /// and whether to close the connection after it.
    fn answer(&self, seen: &Seen, n: usize, repeat: usize) -> (Vec<u8>, bool) {
        let script = self.script.lock().unwrap().clone();
        let target = seen.target.as_str();
        let path = target.split('?').next().unwrap_or_default();
        if script.failing {
            let body = r#"{"error":"unknown"}"#;
            return (reply("500 Internal Server Error", JSON, &[], body), false);
        }
        if let Some(steps) = param(target, "script") {
            let steps: Vec<&str> = steps.split(',').collect();
            return (scripted(steps[repeat.min(steps.len() - 1)]), false);
        }
        if let (Some(life), "/metadata/identity/oauth2/token") = (script.azure_token_life, path) {
            return (self.azure_token(target, n, life), false);
        }
        let fixed: &[u8] = match path {
            "/hop" => b"HTTP/1.1 404 Not Found\r\nServer: EC2ws\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 9\r\n\r\nnot found",
            "/smuggle" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n14\r\nhello-HTTP/1.1 200 X\r\n0\r\n\r\n",
            "/truncated" => {
                return (
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part".to_vec(),
                    true,
                )
            }
            _ => b"",
        };
        if !fixed.is_empty() {
            return (fixed.to_vec(), false);
        }
        if path == "/big" {
            return (
                reply("200 OK", "text/plain", &[], &"x".repeat(5 << 20)),
                false,
            );
        }
        if path.starts_with("/metadata/instance") {
            let body = r#"{"served_by":"fake-imds","compute":{"vmId":"vm-1","userData":"c2VjcmV0","customData":"eA=="},"network":{"interface":[]}}"#;
            return (reply("200 OK", JSON, &[], body), false);
        }
        if seen.method == "PUT" && path == "/latest/api/token" {
            let ttl = seen
                .header("x-aws-ec2-metadata-token-ttl-seconds")
                .unwrap_or("21600")
                .to_owned();
            let token = self.issue(n);
            let headers = [("X-aws-ec2-metadata-token-ttl-seconds", ttl.as_str())];
            return (reply("200 OK", "text/plain", &headers, &token), false);
        }
        let token = if target.contains("security-credentials/") || target.contains("/token") {
            self.issue(n)
        } else {
            String::new()
        };
        let port = seen.port;
        let body = format!(
            "{{\"served_by\":\"fake-imds\",\"port\":{port},\"target\":{target:?},\"n\":{n},\"Token\":{token:?}}}"
        );
        (reply("200 OK", JSON, &[("Server", "EC2ws")], &body), false)
    }

    /// An Azure managed-identity token for the identity `target` asks for (`client_id`,
    /// or the system-assigned one), living `life` from now.
    fn azure_token(&self, target: &str, n: usize, life: Duration) -> Vec<u8> {
        let client = param(target, "client_id").unwrap_or_else(|| "system".into());
        let resource = param(target, "resource").unwrap_or_default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (life, token) = (life.as_secs(), self.issue(n));
        let body = format!(
            r#"{{"access_token":"{token}","client_id":"{client}","expires_in":"{life}","expires_on":"{}","ext_expires_in":"{life}","not_before":"{now}","resource":"{resource}","token_type":"Bearer"}}"#,
            now + life
        );
        reply("200 OK", JSON, &[], &body)
    }
}

const JSON: &str = "application/json; charset=utf-8";

/// An answer with a body of its own length.
fn reply(status: &str, content_type: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    format!("{head}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// The answer a script step names: its status, and `Retry-After` if it gives one.
fn scripted(step: &str) -> Vec<u8> {
    let (status, retry_after) = match step.split_once('r') {
        Some((s, ra)) => (s, Some(ra)),
        None => (step, None),
    };
    let status: u16 = status.parse().expect("a script step starts with a status");
    let headers: Vec<(&str, &str)> = retry_after
        .map(|r| ("Retry-After", r))
        .into_iter()
        .collect();
    let body = format!("scripted {status}");
    reply(&format!("{status} Scripted"), "text/plain", &headers, &body)
}

/// Query parameter `key` of `target`, as sent.
fn param(target: &str, key: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// The next request on a connection, or `None` once the client has closed it.
fn read_request(r: &mut BufReader<TcpStream>, peer: SocketAddr, port: u16) -> Option<Seen> {
    let head = read_head(r)?;
    let mut lines = head.lines();
    let mut words = lines.next()?.split_whitespace();
    let (method, target) = (words.next()?.to_owned(), words.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Seen {
        peer,
        port,
        method,
        target,
        headers,
        head,
        body,
        at: Instant::now(),
    })
}
