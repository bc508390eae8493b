//! What an operator sees: `/metrics`, `/healthz` and `/readyz` on the host's loopback,
//! counters that move with each request, a parse by the Prometheus project's own
//! parser, and nothing of it reachable from a container.

use std::process::{Command, Stdio};

use harness::*;

const MANAGE: &str = "127.0.0.1:9469";

/// The value of the sample `name{labels}` in the metrics text (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_and_health_answer_on_the_hosts_loopback_and_never_to_a_container() {
    require_root!();
    let tb = Testbed::new();
    let _d = tb.daemon(&[]);
    let get = |path: &str| {
        http(&tb.host, MANAGE, "GET", path, &[])
            .0
            .unwrap_or_else(|e| panic!("GET {path} on {MANAGE}: {e}"))
    };
    let series = r#"imds_proxy_requests_total{provider="gce",decision="allow",status="200"}"#;
    let before = get("/metrics");
    assert_eq!(before.status, 200);
    let flavor = [("Metadata-Flavor", "Google")];
    for _ in 0..3 {
        let r = http(
            &tb.container,
            IMDS,
            "GET",
            "/computeMetadata/v1/instance/id",
            &flavor,
        );
        assert_eq!(r.0.expect("answered").status, 200);
    }
    let after = get("/metrics");
    assert_eq!(
        sample(&after.body, series) - sample(&before.body, series),
        3.0,
        "{series} after three requests:\n{}",
        after.body
    );
    assert!(
        sample(
            &after.body,
            r#"imds_proxy_request_duration_seconds_count{provider="gce"}"#
        ) >= 3.0,
        "{}",
        after.body
    );
    assert!(
        sample(
            &after.body,
            r#"imds_proxy_upstream_requests_total{provider="gce",status="2xx"}"#
        ) >= 3.0
    );

    // The Prometheus project's own OpenMetrics parser reads all of it.
    if let Ok(venv) = std::env::var("IMDS_PROXY_SDK_VENV") {
        let mut child = Command::new(format!("{venv}/bin/python"))
            .args([
                "-c",
                "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nprint(' '.join(sorted(f.name for f in p(sys.stdin.read()))))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the SDK virtualenv's python");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), after.body.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the parser refused /metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let families = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        for name in [
            "imds_proxy_requests",
            "imds_proxy_request_duration_seconds",
            "imds_proxy_upstream_requests",
            "imds_proxy_containers",
        ] {
            assert!(
                families.split(' ').any(|f| f == name),
                "{name} not among the parsed families: {families}"
            );
        }
    } else {
        suite::unable(
            test_name!(),
            "IMDS_PROXY_SDK_VENV is not set: /metrics not parsed by prometheus_client",
        );
    }

    let health = get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    // No Docker in the test bed: not ready, and it says why.
    let ready = get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("Docker does not answer"),
        "{}",
        ready.body
    );

    // From a container: the host's bridge address has no such port, and the
    // container's own loopback is its own.
    for addr in ["10.88.0.1:9469", MANAGE] {
        let r = http(&tb.container, addr, "GET", "/metrics", &[]);
        assert_eq!(
            refused(&r),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}: {:?}",
            r.0
        );
    }
}
