//! The daemon's Prometheus metrics: one registry whose counters and histograms the
//! request path, the cache, the credential brokers, the inventory and the reconciler
//! feed, encoded on demand for the management listener (`app::manage`). Every label's
//! values are bounded: providers, decisions, status codes, kinds; never a container,
//! an address or a path.
//!
//! The counters are atomics, so every part records without locks or awaits; the one
//! instance lives for the process ([`get`]).

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub provider: &'static str,
    pub decision: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// `sts` or `iam_credentials`.
    pub service: &'static str,
    /// `ok`, `refused` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub provider: &'static str,
    /// The status class (`2xx`, `4xx`, `429`, `5xx`) or `none` (no answer).
    pub status: &'static str,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by provider, decision and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from a request's arrival to its answer, by provider.
    pub request_seconds: Family<ProviderLabels, Histogram>,
    /// Time spent naming the caller.
    pub identify_seconds: Histogram,
    /// How the cache answered (`hit`, `miss`, `joined`, `bypass`, `remembered`, `full`).
    pub cache: Family<KindLabels, Counter>,
    /// Requests sent to the real service, by provider and answer.
    pub upstream: Family<UpstreamLabels, Counter>,
    /// Time the real service took.
    pub upstream_seconds: Histogram,
    /// Calls to STS and IAM Credentials, by result.
    pub fetches: Family<FetchLabels, Counter>,
    /// Calls to the Docker API, by kind.
    pub docker_calls: Family<KindLabels, Counter>,
    /// Running containers Docker reported.
    pub containers: Gauge,
    /// The tables: applied, restored after drift, failed applies.
    pub tables: Family<KindLabels, Counter>,
    /// Retries of requests to the real service (after a failure worth retrying).
    pub upstream_retries: Family<ProviderLabels, Counter>,
    /// Requests to the real service that waited for its request budget.
    pub pacing_waits: Family<ClassLabels, Counter>,
    /// Background refreshes of held tokens, by result.
    pub refreshes: Family<ResultLabels, Counter>,
    /// Times Docker stopped answering.
    pub docker_outages: Counter,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("imds_proxy");
        let latency = || Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            identify_seconds: latency(),
            cache: Family::default(),
            upstream: Family::default(),
            upstream_seconds: latency(),
            fetches: Family::default(),
            docker_calls: Family::default(),
            containers: Gauge::default(),
            tables: Family::default(),
            upstream_retries: Family::default(),
            pacing_waits: Family::default(),
            refreshes: Family::default(),
            docker_outages: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by provider, decision and status",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer",
            m.request_seconds.clone(),
        );
        registry.register(
            "identify_duration_seconds",
            "Time spent naming the calling container",
            m.identify_seconds.clone(),
        );
        registry.register(
            "cache",
            "How the cache answered requests it may answer",
            m.cache.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests sent to the real metadata service, by provider and answer",
            m.upstream.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time the real metadata service took to answer",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "credential_fetches",
            "Calls to STS (assumed roles) and IAM Credentials (impersonated accounts), by result",
            m.fetches.clone(),
        );
        registry.register(
            "docker_api_calls",
            "Calls to the Docker API, by kind",
            m.docker_calls.clone(),
        );
        registry.register(
            "containers",
            "Running containers Docker reported",
            m.containers.clone(),
        );
        registry.register(
            "table_events",
            "The nftables tables: applied, changed by another process (drift), restored, failed applies",
            m.tables.clone(),
        );
        registry.register(
            "upstream_retries",
            "Requests to the real metadata service sent again after a failure worth retrying",
            m.upstream_retries.clone(),
        );
        registry.register(
            "upstream_pacing_waits",
            "Requests to the real metadata service that waited for its request budget, by class",
            m.pacing_waits.clone(),
        );
        registry.register(
            "cache_refreshes",
            "Background refreshes of held tokens and credentials, by result",
            m.refreshes.clone(),
        );
        registry.register(
            "docker_outages",
            "Times the Docker API stopped answering",
            m.docker_outages.clone(),
        );
        let m = Self { registry, ..m };
        m.seed();
        m
    }

    /// The series an alert watches exist from the start, at zero: a series that first
    /// appears at 1 has no increase for Prometheus to see, so the first failed apply or
    /// refresh would go unnoticed. The values are the ones the callers count under.
    fn seed(&self) {
        for kind in ["applied", "drift", "restored", "failed"] {
            let _ = self.tables.get_or_create(&KindLabels { kind });
        }
        for kind in ["hit", "miss", "joined", "bypass", "error", "full"] {
            let _ = self.cache.get_or_create(&KindLabels { kind });
        }
        for result in ["ok", "failed"] {
            let _ = self.refreshes.get_or_create(&ResultLabels { result });
        }
        for service in ["sts", "iam_credentials"] {
            for result in ["ok", "refused", "failed"] {
                let _ = self.fetches.get_or_create(&FetchLabels { service, result });
            }
        }
        for provider in ["azure", "gce", "aws"] {
            let _ = self
                .upstream_retries
                .get_or_create(&ProviderLabels { provider });
        }
        for class in ["azure", "azure_identity", "gce", "aws"] {
            let _ = self.pacing_waits.get_or_create(&ClassLabels { class });
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// `2xx`, `4xx`, `429`, `5xx`: the class of an upstream status, 429 apart.
pub fn status_class(status: u16) -> &'static str {
    match status {
        429 => "429",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_each_metric_and_its_labels() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                provider: "gce",
                decision: "allow",
                status: 200,
            })
            .inc();
        m.request_seconds
            .get_or_create(&ProviderLabels { provider: "gce" })
            .observe(0.0004);
        m.containers.set(3);
        let text = m.encode();
        assert!(
            text.contains(
                "imds_proxy_requests_total{provider=\"gce\",decision=\"allow\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("imds_proxy_containers 3"), "{text}");
        assert!(text.contains("imds_proxy_request_duration_seconds_count{provider=\"gce\"} 1"));
        assert!(text.ends_with("# EOF\n"));
        // What an alert watches is there before anything happened.
        for series in [
            "imds_proxy_table_events_total{kind=\"failed\"} 0",
            "imds_proxy_cache_refreshes_total{result=\"failed\"} 0",
            "imds_proxy_credential_fetches_total{service=\"sts\",result=\"failed\"} 0",
            "imds_proxy_upstream_pacing_waits_total{class=\"azure_identity\"} 0",
        ] {
            assert!(text.contains(series), "{series}:\n{text}");
        }
        assert_eq!(status_class(429), "429");
        assert_eq!(status_class(503), "5xx");
    }
}
