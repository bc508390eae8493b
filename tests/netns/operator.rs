//! What an operator sees: `/metrics`, `/healthz` and `/readyz` on the host's loopback,
//! counters that move with each request, a parse by the Prometheus project's own
//! parser, and nothing of it reachable from a container; an audit trail a chatty
//! container cannot flood.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

const MANAGE: &str = "127.0.0.1:9469";

/// `GET path` on the management listener, from the host.
fn manage(tb: &Testbed, path: &str) -> Answer {
    http(&tb.host, MANAGE, "GET", path, &[])
        .0
        .unwrap_or_else(|e| panic!("GET {path} on {MANAGE}: {e}"))
}

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
    let get = |path: &str| manage(&tb, path);
    let series = r#"imds_proxy_requests_total{provider="gce",decision="allow",status="200"}"#;
    let before = get("/metrics");
    assert_eq!(before.status, 200);
    // The families without labels are there from the start, at zero if need be, and
    // so are the series an alert watches (a failed apply, refresh or STS call).
    for family in [
        "identify_duration_seconds",
        "upstream_duration_seconds",
        "docker_outages",
        "containers",
        "table_events",
        "cache_refreshes",
        "credential_fetches",
    ] {
        assert!(
            before
                .body
                .contains(&format!("# TYPE imds_proxy_{family} ")),
            "{family} missing:\n{}",
            before.body
        );
    }
    assert_eq!(
        sample(
            &before.body,
            r#"imds_proxy_table_events_total{kind="failed"}"#
        ),
        0.0
    );
    assert!(before
        .body
        .contains(r#"imds_proxy_cache_refreshes_total{result="failed"} 0"#));
    // No Docker here: the daemon has seen it missing once.
    assert!(sample(&before.body, "imds_proxy_docker_outages_total") >= 1.0);
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
    // Docker is the only reason: the tables are in force, the proxy answers its own
    // probe, the metadata service answered.
    assert_eq!(ready.body.lines().count(), 2, "{}", ready.body);

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

/// `n` GETs of `path` on one keep-alive connection to the metadata address, from the
/// namespace the caller runs in; the statuses seen, by count.
fn keep_alive_gets(n: usize, path: &str) -> std::collections::BTreeMap<u16, usize> {
    let mut conn = std::net::TcpStream::connect((IMDS, 80)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {IMDS}\r\nMetadata-Flavor: Google\r\n\r\n");
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        conn.write_all(request.as_bytes()).expect("send");
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).expect("header");
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        *seen.entry(status).or_insert(0) += 1;
    }
    seen
}

/// The sum of `count=` over the summary lines naming `client`.
fn summarised(d: &Daemon, client: &str) -> u64 {
    d.log()
        .iter()
        .filter(|l| l.contains(" repeated ") && l.contains(&format!("client={client} ")))
        .filter_map(|l| {
            l.split(" count=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn repeats_still_counted_when_the_daemon_stops_are_written_as_it_stops() {
    require_root!();
    let tb = Testbed::new();
    // The default interval (a minute): no summary is due before the stop.
    let d = tb.emulator_daemon(&["--unknown-policy", "allow"]);
    let seen = tb
        .container
        .run(|| keep_alive_gets(50, "/computeMetadata/v1/instance/id"));
    assert_eq!(seen.get(&200), Some(&50), "{seen:?}");
    d.wait_for(" request client=10.88.0.2 ", Duration::from_secs(2));
    assert_eq!(summarised(&d, "10.88.0.2"), 0, "nothing summarised yet");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    d.wait_for(" repeated ", Duration::from_secs(2));
    assert_eq!(summarised(&d, "10.88.0.2"), 49, "{:#?}", d.log());
}

/// A second container (10.88.0.3) beside the test bed's, and the daemon on the emulator
/// (no cloud: every allowed answer is routine), summarising each second. Unknown
/// callers may read metadata but not credentials.
fn two_callers_summarised_each_second(tb: &Testbed) -> (Netns, Daemon) {
    let other = Netns::new("ctr2");
    attach_container(&tb.host, &other, "br0", "vc1", "10.88.0.3/24", "10.88.0.1");
    let d = tb.emulator_daemon(&[
        "--unknown-policy",
        "metadata-only",
        "--audit-summary-ms",
        "1000",
    ]);
    (other, d)
}

#[test]
fn a_chatty_container_cannot_flood_the_log_and_another_containers_denial_is_written() {
    require_root!();
    let tb = Testbed::new();
    let (other, d) = two_callers_summarised_each_second(&tb);
    let before = d.log().len();
    const FLOOD: usize = 20_000;
    let started = Instant::now();
    let ((flood, flood_ended), (denied, denied_at)) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            let seen = tb
                .container
                .run(|| keep_alive_gets(FLOOD, "/computeMetadata/v1/instance/id"));
            (seen, Instant::now())
        });
        // In the middle of it, the other container asks for what it may not have.
        std::thread::sleep(Duration::from_millis(300));
        let denied = http(
            &other,
            IMDS,
            "GET",
            "/computeMetadata/v1/instance/service-accounts/default/token",
            &[("Metadata-Flavor", "Google")],
        );
        let at = Instant::now();
        (flood.join().unwrap(), (denied.0.expect("answered"), at))
    });
    let took = flood_ended - started;
    assert_eq!(flood.get(&200), Some(&FLOOD), "{flood:?}");
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(
        denied_at < flood_ended,
        "the denial was answered during the flood"
    );
    // The denial has its line, whatever the flood did.
    d.wait_for("decision=deny", Duration::from_secs(2));
    let line = d
        .log()
        .into_iter()
        .find(|l| l.contains(" request client=10.88.0.3 ") && l.contains("decision=deny"))
        .unwrap_or_else(|| panic!("no denial line for 10.88.0.3:\n{:#?}", d.log()));
    assert!(line.contains("service-accounts/default/token"), "{line}");
    // Every flooding request is accounted for: its first line, then the counts.
    let firsts = d
        .log()
        .iter()
        .filter(|l| l.contains(" request client=10.88.0.2 "))
        .count();
    assert_eq!(firsts, 1, "only the first request has a line of its own");
    let deadline = Instant::now() + Duration::from_secs(5);
    while summarised(&d, "10.88.0.2") < (FLOOD - 1) as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(summarised(&d, "10.88.0.2"), (FLOOD - 1) as u64);
    let lines = d.log().len() - before;
    status_names_callers_that_are_no_container(&tb, &other);

    measure(
        &format!(
            "log lines written for {FLOOD} requests from one container in {:.1} s, plus one denial from another",
            took.as_secs_f64()
        ),
        lines,
    );
    // A few lines per second of flood, not one per request.
    let bound = 10 + 2 * took.as_secs() as usize;
    assert!(
        lines <= bound,
        "{lines} lines (at most {bound} expected):\n{:#?}",
        &d.log()[before..]
    );
}

#[test]
fn a_container_hammering_a_denied_path_cannot_flood_the_log_either() {
    require_root!();
    let tb = Testbed::new();
    let (other, d) = two_callers_summarised_each_second(&tb);
    const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
    const FLOOD: usize = 10_000;
    let ((flood, flood_ended), (denied, denied_at)) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            let seen = tb.container.run(|| keep_alive_gets(FLOOD, TOKEN));
            (seen, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(100));
        let denied = http(&other, IMDS, "GET", TOKEN, &[("Metadata-Flavor", "Google")]);
        let at = Instant::now();
        (flood.join().unwrap(), (denied.0.expect("answered"), at))
    });
    // Every request still denied: counting changes the log, never the answer.
    assert_eq!(flood.get(&403), Some(&FLOOD), "{flood:?}");
    assert_eq!(denied.status, 403);
    assert!(denied_at < flood_ended, "denied during the flood");
    d.wait_for(" request client=10.88.0.3 ", Duration::from_secs(2));
    let denial = |client: &str| {
        d.log()
            .iter()
            .filter(|l| l.contains(&format!(" request client={client} ")))
            .filter(|l| l.contains("decision=deny") && l.contains("rule=policy"))
            .count()
    };
    assert_eq!(
        denial("10.88.0.3"),
        1,
        "the other container's denial is written"
    );
    let in_full = denial("10.88.0.2");
    // The first 10 in full, with their rule (a summary falling among them, before any
    // repeat, forgets them, and the next 10 are written in full again).
    assert!((10..=20).contains(&in_full), "{in_full} lines in full");
    let deadline = Instant::now() + Duration::from_secs(5);
    while summarised(&d, "10.88.0.2") < (FLOOD - in_full) as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(summarised(&d, "10.88.0.2"), (FLOOD - in_full) as u64);
    let repeated = d
        .log()
        .into_iter()
        .find(|l| l.contains(" repeated ") && l.contains("client=10.88.0.2 "))
        .unwrap();
    assert!(repeated.contains("decision=deny status=403"), "{repeated}");
}

/// `imds-proxy status` in the daemon's namespace: the emulator, no cache, the latest
/// decision of callers no container owns; refused to others than root; and in a
/// namespace without a daemon, says so.
fn status_names_callers_that_are_no_container(tb: &Testbed, other: &Netns) {
    let report: serde_json::Value =
        serde_json::from_str(&tb.host.exec(&[bin(), "status", "--json"])).expect("JSON");
    assert_eq!(
        report["source"], "emulator (built-in example)",
        "{report:#}"
    );
    assert_eq!(report["cache"], serde_json::Value::Null);
    assert_eq!(report["tables"]["bridges"], serde_json::json!(["br0"]));
    let callers = report["other_callers"].as_array().unwrap();
    let of = |client: &str| {
        callers
            .iter()
            .find(|c| c["client"] == client)
            .unwrap_or_else(|| panic!("{client} not in {report:#}"))
    };
    assert_eq!(of("10.88.0.2")["decision"], "allow");
    assert_eq!(of("10.88.0.3")["decision"], "deny");
    assert_eq!(of("10.88.0.3")["status"], 403);
    let (ok, _, err) = tb.host.try_exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin(),
        "status",
    ]);
    assert!(!ok && err.contains("needs root"), "{err}");
    let (ok, _, err) = other.try_exec(&[bin(), "status"]);
    assert!(
        !ok && err.contains("no daemon runs in this network namespace"),
        "{err}"
    );
}

#[test]
fn readyz_turns_not_ready_within_a_second_when_the_tables_cannot_be_put_back() {
    require_root!();
    let tb = Testbed::new();
    // Plain tables, which another process may delete (owned ones it cannot).
    let d = tb.daemon(&["--table-owner", "off"]);
    let readyz = || manage(&tb, "/readyz");
    // There is no Docker in the namespace, which /readyz names as a reason of its own:
    // what this test watches is the tables' reason.
    let tables_down = || {
        let a = readyz();
        a.status == 503 && a.body.contains("the tables are not in force")
    };
    assert!(!tables_down(), "{:?}", readyz());
    // Another process deletes the table and holds one of the same name that only it may
    // change (an owned table, gone when that process ends): the daemon cannot put its
    // own back.
    let mut usurper = Command::new("ip")
        .args(["netns", "exec", &tb.host.name, "nft", "-i"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nft -i");
    let taken = Instant::now();
    usurper
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"delete table ip imds_proxy; add table ip imds_proxy { flags owner; }\n")
        .unwrap();
    until(
        Duration::from_secs(3),
        "/readyz not ready with the table gone",
        tables_down,
    );
    let took = taken.elapsed();
    measure("table deleted to /readyz not ready (ms)", took.as_millis());
    assert!(took < Duration::from_secs(1), "{took:?}");
    let metrics = manage(&tb, "/metrics").body;
    assert!(
        sample(&metrics, r#"imds_proxy_table_events_total{kind="drift"}"#) >= 1.0,
        "{metrics}"
    );
    let not_ready = readyz();
    assert!(
        not_ready.body.contains("the tables are not in force"),
        "{not_ready:?}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&tb.host.exec(&[bin(), "status", "--json"])).expect("JSON");
    assert!(report["tables"]["problem"].is_string(), "{report:#}");
    let kinds: Vec<&str> = report["tables"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"failed"), "{report:#}");
    // The table's deletion reported each of its hundred-odd rules: status records the
    // burst, not every rule of it.
    let drifts = kinds.iter().filter(|k| **k == "drift").count();
    assert!((1..=12).contains(&drifts), "{report:#}");
    // The other process ends, its table with it: the daemon puts its own back.
    drop(usurper.stdin.take());
    usurper.wait().unwrap();
    until(Duration::from_secs(3), "/readyz ready again", || {
        !tables_down()
    });
    assert!(tb.host.nft_table().is_some());
    let restored: serde_json::Value =
        serde_json::from_str(&tb.host.exec(&[bin(), "status", "--json"])).expect("JSON");
    assert!(restored["tables"]["problem"].is_null(), "{restored:#}");
    // The failure says what it is.
    d.wait_for(
        "another process owns a table of the same name",
        Duration::from_secs(1),
    );
    drop(d);
}

#[test]
fn readyz_says_when_the_metadata_service_stops_answering_and_when_it_is_back() {
    require_root!();
    let tb = Testbed::new();
    let _d = tb.daemon(&["--request-timeout-ms", "500"]);
    let readyz = || manage(&tb, "/readyz").body;
    let ask = || {
        http(
            &tb.container,
            IMDS,
            "GET",
            "/computeMetadata/v1/instance/id",
            &[("Metadata-Flavor", "Google")],
        )
        .0
        .expect("answered")
        .status
    };
    const DOWN: &str = "the metadata service does not answer";
    assert_eq!(ask(), 200);
    assert!(!readyz().contains(DOWN));
    // The service's route goes: the proxy's requests to it find no way there.
    tb.host.ip("route del 169.254.169.254/32");
    assert!(ask() >= 500);
    let body = readyz();
    assert!(body.contains(DOWN), "{body}");
    tb.host.ip("route add 169.254.169.254/32 via 10.99.0.2");
    // The next answered request clears it.
    until(
        Duration::from_secs(3),
        "an answer through the restored route",
        || ask() == 200,
    );
    let body = readyz();
    assert!(!body.contains(DOWN), "{body}");
}
