//! The management listener: `/metrics` (Prometheus / OpenMetrics text), `/healthz` (the
//! process answers) and `/readyz` (the tables are in force, the proxy serves, Docker
//! answers; otherwise 503 with the reasons), on a loopback address of its own, never the
//! proxy's: only the host reaches it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::docker::InventoryHandle;

/// Table events `status` shows, the most recent last.
const EVENTS_KEPT: usize = 32;

/// What the running loop reports of the tables: what readiness and `status` read.
#[derive(Default)]
pub(crate) struct Readiness {
    tables: Mutex<Tables>,
    /// Why the daemon's own probe of the proxy failed, last time; `None`: answered.
    probe: Mutex<Option<String>>,
}

/// The tables as the running loop last saw them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Tables {
    /// Why the last apply or restore failed; `None`: in force.
    pub problem: Option<String>,
    /// Open (containers proxied) or closed (refused).
    pub open: bool,
    /// The bridges intercepted.
    pub bridges: Vec<String>,
    /// Recent drift, restores and failures.
    pub events: std::collections::VecDeque<TableEvent>,
}

/// Something that happened to the tables.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TableEvent {
    /// Seconds since the epoch.
    pub at: u64,
    /// `drift`, `restored` or `failed`.
    pub kind: String,
    pub detail: String,
}

impl Readiness {
    /// The tables are in force (applied, verified or restored).
    pub fn tables_ok(&self) {
        self.lock().problem = None;
    }

    /// The tables could not be applied or restored.
    pub fn tables_failed(&self, why: String) {
        let mut t = self.lock();
        if t.problem.as_ref() != Some(&why) {
            push(&mut t.events, "failed", why.clone());
        }
        t.problem = Some(why);
    }

    /// Someone else changed the tables, or they were put back.
    pub fn table_event(&self, kind: &str, detail: String) {
        push(&mut self.lock().events, kind, detail);
    }

    /// The plan in force: open or closed, and its bridges.
    pub fn plan(&self, open: bool, bridges: Vec<String>) {
        let mut t = self.lock();
        t.open = open;
        t.bridges = bridges;
    }

    fn probed(&self, failure: Option<String>) {
        *self
            .probe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = failure;
    }

    fn probe_failure(&self) -> Option<String> {
        self.probe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn tables(&self) -> Tables {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn push(events: &mut std::collections::VecDeque<TableEvent>, kind: &str, detail: String) {
    if events.len() == EVENTS_KEPT {
        events.pop_front();
    }
    events.push_back(TableEvent {
        at: crate::clock::unix_now(),
        kind: kind.to_owned(),
        detail,
    });
}

/// What the listener reads.
#[derive(Clone)]
pub(crate) struct Manage {
    pub readiness: Arc<Readiness>,
    pub inventory: InventoryHandle,
    /// The proxy's serving task has ended.
    pub proxy_gone: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The proxy, for how its exchanges with the real service went.
    pub proxy: std::sync::Weak<crate::proxy::Proxy>,
}

impl Manage {
    /// Why the daemon is not ready; empty: ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(e) = self.readiness.lock().problem.clone() {
            why.push(format!("the tables are not in force: {e}"));
        }
        if (self.proxy_gone)() {
            why.push("the proxy is not serving".into());
        } else if let Some(e) = self.readiness.probe_failure() {
            why.push(format!("the proxy does not answer on its own address: {e}"));
        }
        if let Some(e) = self.proxy.upgrade().and_then(|p| p.upstream_failing()) {
            why.push(format!("the metadata service does not answer: {e}"));
        }
        if !self.inventory.rx.borrow().connected {
            why.push("Docker does not answer: new containers cannot be named".into());
        }
        why
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, ct: &'static str, body: String| {
            Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, ct)
                .body(Full::new(Bytes::from(body)))
                .expect("static response parts are valid")
        };
        if req.method() != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        match req.uri().path() {
            "/metrics" => {
                let m = crate::metrics::get();
                m.containers
                    .set(self.inventory.rx.borrow().containers() as i64);
                text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    m.encode(),
                )
            }
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => match self.not_ready() {
                why if why.is_empty() => text(StatusCode::OK, "text/plain", "ready\n".into()),
                why => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready:\n{}\n", why.join("\n")),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "/metrics, /healthz, /readyz\n".into(),
            ),
        }
    }
}

/// Binds `addr` and serves there for the rest of the process. A bind that fails is
/// logged, not fatal: the proxy matters more than its metrics.
pub(crate) async fn spawn(addr: SocketAddr, manage: Manage) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "cannot listen for metrics and health checks; serving without them");
            return;
        }
    };
    info!(%addr, "metrics and health checks: /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let manage = manage.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = manage.answer(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let _ = conn.await;
            });
        }
    });
}

/// How often the daemon asks its own proxy, and how long it waits for the answer.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Asks the proxy at `addr`, once a second for the rest of the process, the way a
/// host process would (a request with the probe key, answered `204` unaudited); what
/// came of it is what `/readyz` says of the proxy.
pub(crate) fn spawn_probe(addr: SocketAddr, key: String, readiness: Arc<Readiness>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tick.tick().await;
            let outcome = tokio::time::timeout(PROBE_EVERY, probe(addr, &key)).await;
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{addr}: {e}")),
                Err(_) => Some(format!("{addr}: no answer within {PROBE_EVERY:?}")),
            };
            readiness.probed(failure);
        }
    });
}

async fn probe(addr: SocketAddr, key: &str) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\n{}: {key}\r\nConnection: close\r\n\r\n",
        crate::proxy::PROBE_HEADER
    );
    conn.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).await?;
    if &head[..] == b"HTTP/1.1 204" {
        Ok(())
    } else {
        let seen = String::from_utf8_lossy(&head).into_owned();
        Err(std::io::Error::other(format!("answered {seen:?}")))
    }
}
