//! The one audit event of each request: who called, what was asked (the path and the
//! query's names, never a value), what was decided and by which rule, and how it went.

use std::net::IpAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use tracing::{info, warn};

use super::admit::Decision;
use super::cache;
use super::identify::{Caller, Origin};
use super::ClientAddr;

/// What the audit event of one request says besides who called.
#[derive(Debug, Default)]
pub(super) struct Audit {
    /// The canonical path (never the query: its values may be secrets).
    pub path: Option<String>,
    /// The provider the path belongs to.
    pub provider: Option<crate::request::Provider>,
    /// The names of the query parameters, without their values.
    pub query_keys: Option<String>,
    pub decision: Decision,
    /// The policy rule that decided, and why that policy applied.
    pub rule: String,
    pub upstream_status: Option<u16>,
    /// How the cache answered, when the request was one it may answer.
    pub cache: Option<cache::How>,
    pub error: Option<String>,
}

/// `a=1&b=2` → `a,b`: what was asked, without the values. A part without `=` is all
/// value (it could be a token) and is left out; at most 16 names.
pub(super) fn query_keys(q: &str) -> String {
    q.split('&')
        .filter_map(|p| p.split_once('=').map(|(k, _)| k))
        .take(16)
        .map(|k| {
            k.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(64)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How long a request took: to identify its caller, and in all.
pub(super) struct Timing {
    pub identify_us: u64,
    pub elapsed_ms: u64,
}

impl Audit {
    /// Whether the request is routine: allowed, and answered without asking the real
    /// service (from the cache, the emulator or credentials the proxy holds). Only a
    /// routine request's repeats may be summarised (see `proxy::trail`).
    pub(super) fn is_routine(&self, status: StatusCode) -> bool {
        let unasked = match self.cache {
            Some(how) => how == cache::How::Hit,
            None => self.upstream_status.is_none(),
        };
        self.decision == Decision::Allow
            && self.error.is_none()
            && !status.is_server_error()
            && unasked
    }

    /// Counts the request in the metrics: by provider, decision and status; its time,
    /// and the time naming its caller took.
    pub(super) fn count(&self, status: StatusCode, elapsed: Duration, identify: Duration) {
        let m = crate::metrics::get();
        let provider = self
            .provider
            .map_or("other", crate::request::Provider::name);
        m.requests
            .get_or_create(&crate::metrics::RequestLabels {
                provider,
                decision: self.decision.name(),
                status: status.as_u16(),
            })
            .inc();
        m.request_seconds
            .get_or_create(&crate::metrics::ProviderLabels { provider })
            .observe(elapsed.as_secs_f64());
        m.identify_seconds.observe(identify.as_secs_f64());
        if let Some(how) = self.cache {
            m.cache
                .get_or_create(&crate::metrics::KindLabels { kind: how.name() })
                .inc();
        }
    }

    /// Writes the event: at info, or at warn when the request failed. A forged source
    /// gets a line of its own naming both sides.
    pub(super) fn write(
        &self,
        caller: &Caller,
        client: ClientAddr,
        origin: Origin,
        method: &Method,
        status: StatusCode,
        t: Timing,
    ) {
        let (container, container_id) = names(caller);
        if let Caller::Forged {
            port_owner,
            claimed,
        } = caller
        {
            let claimed: &IpAddr = claimed;
            warn!(%client, %claimed, port_owner = %port_owner.name, port_owner_id = port_owner.container.short(), "refused a request whose source address is not the container's on that bridge port");
        }
        let path = self.path.as_deref().unwrap_or("-");
        let query_keys = self.query_keys.as_deref().unwrap_or("");
        let decision = self.decision.name();
        let rule = &self.rule;
        let status = status.as_u16();
        let upstream_status = self.upstream_status.unwrap_or(0);
        let cache = self.cache.map_or("-", cache::How::name);
        let (identify_us, elapsed_ms) = (t.identify_us, t.elapsed_ms);
        // A root event: outside the connection's and request's spans, so that each of
        // its fields is written once (the spans would repeat client, method and path).
        match &self.error {
            None => {
                info!(parent: None, %client, container_id = %container_id, container = %container, origin = ?origin, %method, path = %path, query_keys = %query_keys, decision = %decision, rule = %rule, status, upstream_status, cache, identify_us, elapsed_ms, "request")
            }
            Some(error) => {
                warn!(parent: None, %client, container_id = %container_id, container = %container, origin = ?origin, %method, path = %path, query_keys = %query_keys, decision = %decision, rule = %rule, status, upstream_status, cache, identify_us, elapsed_ms, error = %error, "request")
            }
        }
    }
}

/// The caller's name and short container id as the audit writes them.
pub(super) fn names(caller: &Caller) -> (&str, &str) {
    match caller {
        Caller::Container(e) => (e.name.as_str(), e.container.short()),
        Caller::Host => ("(host)", "-"),
        Caller::Forged { .. } => ("(forged source)", "-"),
        _ => ("-", "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::query_keys;

    #[test]
    fn the_audit_keeps_query_names_and_never_values() {
        assert_eq!(
            query_keys("api-version=2021-02-01&resource=x"),
            "api-version,resource"
        );
        // A bare part is a value (it could be a token): left out.
        assert_eq!(query_keys("SECRETTOKEN&a=1"), "a");
        assert_eq!(query_keys("a=b=c&&=v"), "a,");
        let many = (0..40)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(query_keys(&many).split(',').count(), 16);
    }
}
