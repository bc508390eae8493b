//! The upstream's protection: its request rate and cap on requests in flight, retries
//! of transient failures within the caller's deadline, the upstream's own Retry-After,
//! and the AWS budget and deadline.

use harness::http::request;
use harness::rig::from_raw;

use super::*;

/// A proxy (every caller the host, policy allow) in front of `up` with these upstream
/// limits; AWS requests get `aws_ms`, the others `timeout_ms`.
async fn start_protected(
    up: SocketAddr,
    timeout_ms: u64,
    aws_ms: u64,
    limits: proxy::protect::Limits,
) -> Running {
    let mut s = rig::settings(up);
    s.request_timeout = Duration::from_millis(timeout_ms);
    s.aws_request_timeout = Duration::from_millis(aws_ms);
    s.upstream_limits = limits;
    s.identify_wait = Duration::ZERO;
    start_settings(s).await
}

/// Sends every request at once and returns the answers.
async fn all_at_once(addr: SocketAddr, reqs: Vec<Vec<u8>>) -> Vec<Answer> {
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
    let f = FakeImds::loopback();
    let mut limits = proxy::protect::Limits::default();
    let limit: imds_proxy::policy::RateLimit = "5/s".parse().unwrap();
    limits.set_rate(proxy::protect::Class::AzureIdentity, limit);
    let p = start_protected(f.addr(), 2000, 2000, limits).await;
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
    let f = FakeImds::loopback();
    let mut limits = proxy::protect::Limits::default();
    // The rate out of the way: only the cap on requests in flight (5) applies.
    limits.set_rate(
        proxy::protect::Class::AzureIdentity,
        "1000/s".parse().unwrap(),
    );
    let p = start_protected(f.addr(), 5000, 5000, limits).await;
    let reqs = (0..40)
        .map(|i| get(&format!("{TOKEN}&hold=150&n={i}")))
        .collect();
    let answers = all_at_once(p.addr, reqs).await;
    // 40 requests of 150 ms, 5 at a time, fit well in 5 s: all are served.
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    assert_eq!(f.arrivals("/metadata/identity/").len(), 40);
    // Five at a time, not fewer: a proxy that sent them one by one would also keep
    // under the cap, and take 6 s.
    let most = f.most_identity_requests_at_once();
    assert_eq!(most, 5, "identity requests in flight at once at the most");
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_and_refusals_are_not() {
    let f = FakeImds::loopback();
    let p = start_protected(f.addr(), 3000, 3000, Default::default()).await;
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
        assert_eq!(f.attempts(&target), tries, "{method} {target}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_waits_as_long_as_the_upstreams_retry_after_says() {
    let f = FakeImds::loopback();
    let p = start_protected(f.addr(), 3000, 3000, Default::default()).await;
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
    let f = FakeImds::loopback();
    let p = start_protected(f.addr(), 800, 800, Default::default()).await;
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
        assert_eq!(f.attempts(&target), 1, "{target}");
    }
    // A hung attempt is tried again on a fresh connection while time allows; then the
    // caller gets the proxy's timeout answer.
    let target = format!("{gce}?hold=1500");
    let a = raw(p.addr, get(&target)).await.0.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (504, "upstream_timeout")
    );
    let tries = f.attempts(&target);
    assert!((2..=4).contains(&tries), "{tries} attempts");
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_requests_have_their_own_shorter_deadline() {
    let f = FakeImds::loopback();
    let p = start_protected(f.addr(), 3000, 300, Default::default()).await;
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
    let f = FakeImds::loopback();
    let mut limits = proxy::protect::Limits::default();
    limits.set_rate(proxy::protect::Class::Aws, "1/min burst 1".parse().unwrap());
    let p = start_protected(f.addr(), 2000, 900, limits).await;
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
    let seen: Vec<String> = heads(&f)
        .iter()
        .map(|h| h.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["PUT /latest/api/token HTTP/1.1"]);
}
