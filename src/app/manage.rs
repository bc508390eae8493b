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
    let at = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    events.push_back(TableEvent {
        at,
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
}

impl Manage {
    /// Why the daemon is not ready; empty: ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(e) = self.readiness.tables().problem {
            why.push(format!("the tables are not in force: {e}"));
        }
        if (self.proxy_gone)() {
            why.push("the proxy is not serving".into());
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
