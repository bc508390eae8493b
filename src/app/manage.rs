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

/// What readiness depends on, as the running daemon reports it.
#[derive(Default)]
pub(crate) struct Readiness {
    /// The last apply of the tables failed: why.
    tables: Mutex<Option<String>>,
}

impl Readiness {
    /// The tables are in force (applied, verified or restored).
    pub fn tables_ok(&self) {
        *self.tables.lock().expect("readiness lock") = None;
    }

    /// The tables could not be applied or restored.
    pub fn tables_failed(&self, why: String) {
        *self.tables.lock().expect("readiness lock") = Some(why);
    }
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
    fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(e) = self
            .readiness
            .tables
            .lock()
            .expect("readiness lock")
            .clone()
        {
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
