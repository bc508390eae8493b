//! The cache's behaviour with scripted requests to the service, on tokio's paused
//! clock: no network, and time passes only when a test advances it. Every other wait is
//! on a gate the test opens, or on a request the test knows is under way.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use futures::FutureExt;
use http::Method;
use tokio::sync::Semaphore;
use tokio::time::advance;

use super::*;
use crate::request::canonical::CanonicalPath;

const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

fn keyed(target: &str) -> Keyed {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = CanonicalPath::parse(path).unwrap();
    classify(&Method::GET, &path, query, true, true).expect("cacheable")
}

/// A GCE token answer living `secs`.
fn gce(token: &str, secs: u64) -> Stored {
    stored(
        200,
        &format!(r#"{{"access_token":"{token}","expires_in":{secs},"token_type":"Bearer"}}"#),
    )
}

fn stored(status: u16, body: &str) -> Stored {
    Stored {
        status: StatusCode::from_u16(status).unwrap(),
        headers: HeaderMap::new(),
        body: Bytes::from(body.to_owned()),
    }
}

/// Requests to the service, as a script: counts them, each answers `answer` once the
/// gate lets it.
#[derive(Clone)]
struct Service {
    calls: Arc<AtomicUsize>,
    purposes: Arc<Mutex<Vec<Purpose>>>,
    gate: Arc<Semaphore>,
}

impl Service {
    fn new(open: bool) -> Self {
        Self {
            calls: Arc::default(),
            purposes: Arc::default(),
            gate: Arc::new(Semaphore::new(if open {
                Semaphore::MAX_PERMITS
            } else {
                0
            })),
        }
    }

    fn fetch(&self, answer: Result<Stored, ()>) -> impl FnMut(Purpose) -> Fetch + '_ {
        move |purpose| {
            self.calls.fetch_add(1, SeqCst);
            self.purposes.lock().unwrap().push(purpose);
            let (gate, answer) = (self.gate.clone(), answer.clone());
            async move {
                let _permit = gate.acquire().await.unwrap();
                answer.map_err(|()| ProxyError::UpstreamTimeout(Duration::from_millis(1)))
            }
            .boxed()
        }
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn body(r: &Result<Stored, ProxyError>) -> String {
    String::from_utf8(r.as_ref().expect("an answer").body.to_vec()).unwrap()
}

async fn settled(step: Step) -> (Result<Stored, ProxyError>, How) {
    match step {
        Step::Ready(a, how) => (a, how),
        Step::Wait(f, how) => (f.wait(later()).await, how),
        Step::Pass => panic!("passed"),
    }
}

/// Waits until the request to the service under way for `k` (a refresh a hit started)
/// has landed in the cache.
async fn landed(cache: &Cache, k: &Keyed) {
    let flight = cache.inner.lock().slots[&k.key].flight.clone();
    if let Some(f) = flight {
        let _ = f.wait(later()).await;
    }
}

/// The calendar time of a test: a fixed date when it starts, moving with tokio's paused
/// clock, so that the service's absolute expiries and the cache's clock agree.
#[derive(Clone, Copy)]
struct Calendar {
    start: Instant,
}

impl Calendar {
    const START_UNIX: u64 = 1_700_000_000;

    fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    fn unix(self) -> u64 {
        Self::START_UNIX + (Instant::now() - self.start).as_secs()
    }

    /// A cache reading this calendar.
    fn cache(self, settings: CacheSettings) -> Cache {
        Cache::with_calendar(settings, Box::new(move || self.unix()))
    }

    /// An Azure managed-identity token answer living `secs` from now, both ways Azure
    /// counts it (`expires_in`, and `expires_on` in calendar time).
    fn azure(self, token: &str, secs: u64) -> Stored {
        stored(
            200,
            &format!(
                r#"{{"access_token":"{token}","expires_in":"{secs}","expires_on":"{}","ext_expires_in":"{secs}","token_type":"Bearer"}}"#,
                self.unix() + secs
            ),
        )
    }
}

fn json(r: &Result<Stored, ProxyError>) -> serde_json::Value {
    serde_json::from_str(&body(r)).expect("a JSON answer")
}

/// A field of an Azure answer, a number written as a string.
fn seconds(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_str().and_then(|s| s.parse().ok()).expect(field)
}

/// Everything logged on this thread while its guard lives: the paused runtime runs the
/// cache's requests on the test's own thread.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let log = Self::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_are_one_request_and_every_waiter_gets_its_answer() {
    let cache = Cache::new(CacheSettings::default());
    let k = keyed(TOKEN);
    let svc = Service::new(false);
    let steps: Vec<Step> = (0..200)
        .map(|_| cache.step(&k, svc.fetch(Ok(gce("tok-1", 3600)))))
        .collect();
    assert_eq!(svc.calls(), 1);
    let hows: Vec<How> = steps
        .iter()
        .map(|s| match s {
            Step::Wait(_, how) => *how,
            _ => panic!("a miss waits"),
        })
        .collect();
    assert_eq!(hows[0], How::Miss);
    assert!(hows[1..].iter().all(|h| *h == How::Joined));
    svc.open();
    let answers = futures::future::join_all(steps.into_iter().map(settled)).await;
    for (a, _) in &answers {
        assert!(body(a).contains("\"tok-1\""));
    }
    // Held now: the next caller is served without the service.
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(gce("tok-2", 3600))))).await;
    assert_eq!((how, svc.calls()), (How::Hit, 1));
    assert!(body(&a).contains("\"tok-1\""));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_past_its_deadline_gets_a_timeout_and_the_request_still_fills_the_cache() {
    let cache = Cache::new(CacheSettings::default());
    let k = keyed(TOKEN);
    let svc = Service::new(false);
    let Step::Wait(flight, How::Miss) = cache.step(&k, svc.fetch(Ok(gce("tok", 3600)))) else {
        panic!("a miss waits");
    };
    let late = flight.clone().wait(Instant::now()).await;
    assert!(
        matches!(late, Err(ProxyError::UpstreamTimeout(_))),
        "{late:?}"
    );
    svc.open();
    // The request went on without its caller, and filled the cache.
    landed(&cache, &k).await;
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(gce("other", 3600))))).await;
    assert_eq!((how, svc.calls()), (How::Hit, 1));
    assert!(body(&a).contains("\"tok\""));
    drop(flight);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_request_answers_every_waiter_and_frees_the_key() {
    let cache = Cache::new(CacheSettings::default());
    let k = keyed(TOKEN);
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let boom = move |_| -> Fetch {
        let g = g.clone();
        async move {
            let _p = g.acquire().await;
            panic!("the request broke")
        }
        .boxed()
    };
    let first = cache.step(&k, boom.clone());
    let second = cache.step(&k, boom);
    gate.add_permits(1);
    for step in [first, second] {
        let (a, _) = settled(step).await;
        let e = a.expect_err("no answer");
        assert_eq!(e.status_and_code().0, StatusCode::BAD_GATEWAY, "{e}");
    }
    // Not stuck: the next caller asks the service again.
    let svc = Service::new(true);
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(gce("tok", 3600))))).await;
    assert_eq!((how, svc.calls()), (How::Miss, 1));
    assert!(body(&a).contains("tok"));
}

#[tokio::test(start_paused = true)]
async fn failures_are_remembered_for_the_error_window_only() {
    let k = keyed(TOKEN);
    let window = Duration::from_secs(60);
    for errors in [window, Duration::ZERO] {
        // A failing answer, and no answer at all.
        for failure in [Ok(stored(500, "broken")), Err(())] {
            let cache = Cache::new(CacheSettings {
                errors,
                ..Default::default()
            });
            let svc = Service::new(true);
            let (a, how) = settled(cache.step(&k, svc.fetch(failure.clone()))).await;
            assert_eq!((how, svc.calls()), (How::Miss, 1));
            if !errors.is_zero() {
                // Every caller within the window gets the failure, without a request.
                advance(errors - Duration::from_millis(1)).await;
                let (b, how) = settled(cache.step(&k, svc.fetch(Ok(gce("tok", 3600))))).await;
                assert_eq!((how, svc.calls()), (How::Remembered, 1));
                assert_eq!(a.is_ok(), b.is_ok());
                if let Ok(b) = b {
                    assert_eq!(b.status, 500);
                }
                advance(Duration::from_millis(1)).await;
            }
            // After it (or with no window at all), the service is asked again, and its
            // recovery is served.
            let (b, how) = settled(cache.step(&k, svc.fetch(Ok(gce("tok", 3600))))).await;
            assert_eq!((how, svc.calls()), (How::Miss, 2));
            assert!(body(&b).contains("tok"));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn refusals_and_short_lived_tokens_pass_through_uncached() {
    let cache = Cache::new(CacheSettings::default());
    let k = keyed(TOKEN);
    let svc = Service::new(true);
    for answer in [
        stored(404, "no"),
        stored(403, "no"),
        stored(200, "not a token"),
        gce("short", GCE_MIN_REMAINING.as_secs()),
    ] {
        let before = svc.calls();
        for _ in 0..2 {
            let (_, how) = settled(cache.step(&k, svc.fetch(Ok(answer.clone())))).await;
            assert_eq!(how, How::Miss);
        }
        assert_eq!(svc.calls(), before + 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_serving_the_token_until_it_is_due_and_says_why() {
    let (log, _guard) = Log::capture();
    let cache = Cache::new(CacheSettings::default());
    let k = keyed(TOKEN);
    let svc = Service::new(true);
    // A minute of serving window: due for a refresh from the start.
    let window = Duration::from_secs(60);
    let life = GCE_MIN_REMAINING + window;
    body(
        &settled(cache.step(&k, svc.fetch(Ok(gce("tok-1", life.as_secs())))))
            .await
            .0,
    );
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(stored(503, "down"))))).await;
    assert_eq!(how, How::Hit);
    assert!(body(&a).contains("tok-1"));
    assert_eq!(
        *svc.purposes.lock().unwrap(),
        [Purpose::Fill, Purpose::Refresh]
    );
    // The refresh lands: logged (without the token), the token still served, no new
    // refresh for a while.
    landed(&cache, &k).await;
    let text = log.text();
    assert!(
        text.contains("refreshing a cached token failed"),
        "log:\n{text}"
    );
    assert!(!text.contains("tok-1"), "a token in the log:\n{text}");
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(gce("tok-2", 3600))))).await;
    assert_eq!((how, svc.calls()), (How::Hit, 2));
    assert!(body(&a).contains("tok-1"));
    {
        let slot = &cache.inner.lock().slots[&k.key];
        assert!(slot.refresh_at.unwrap() >= Instant::now() + timing::MIN_RETRY);
        assert!(slot.failed.is_none(), "a valid token is not a failure");
    }
    // Served, with the refresh failing, up to the end of its window...
    advance(window - Duration::from_millis(1)).await;
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(stored(503, "down"))))).await;
    assert_eq!(how, How::Hit);
    assert!(body(&a).contains("tok-1"));
    landed(&cache, &k).await;
    // ...and then no longer: the caller gets the service's failure.
    advance(Duration::from_millis(1)).await;
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(stored(503, "down"))))).await;
    assert_eq!((how, a.unwrap().status.as_u16()), (How::Miss, 503));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_replaces_the_token_once_it_brings_a_fresher_one() {
    let cache = Cache::new(CacheSettings::default());
    let k = keyed(TOKEN);
    let svc = Service::new(true);
    let life = GCE_MIN_REMAINING.as_secs() + 60;
    body(
        &settled(cache.step(&k, svc.fetch(Ok(gce("tok-1", life)))))
            .await
            .0,
    );
    body(
        &settled(cache.step(&k, svc.fetch(Ok(gce("tok-2", 3600)))))
            .await
            .0,
    );
    landed(&cache, &k).await;
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(gce("tok-3", 3600))))).await;
    assert_eq!(how, How::Hit);
    assert!(body(&a).contains("tok-2"), "{}", body(&a));
    assert_eq!(svc.calls(), 2, "one fill, one refresh");
}

#[tokio::test(start_paused = true)]
async fn bypass_reaches_the_service_at_most_once_per_key_in_its_window() {
    let calendar = Calendar::new();
    let cache = calendar.cache(CacheSettings::default());
    let plain = keyed(&format!("{}?resource=r", "/metadata/identity/oauth2/token"));
    let bypass = keyed("/metadata/identity/oauth2/token?resource=r&bypass_cache=true");
    let svc = Service::new(true);
    let azure = |t: &str| calendar.azure(t, 86_399);
    body(
        &settled(cache.step(&plain, svc.fetch(Ok(azure("old")))))
            .await
            .0,
    );
    let (a, how) = settled(cache.step(&bypass, svc.fetch(Ok(azure("new"))))).await;
    assert_eq!(how, How::Bypass);
    assert!(body(&a).contains("new"));
    // Replaced for everyone; a second bypass in the window is served from the cache.
    let (a, how) = settled(cache.step(&bypass, svc.fetch(Ok(azure("newer"))))).await;
    assert_eq!(how, How::Hit);
    assert!(body(&a).contains("new"));
    let (a, _) = settled(cache.step(&plain, svc.fetch(Ok(azure("x"))))).await;
    assert!(body(&a).contains("\"new\""));
    assert_eq!(
        *svc.purposes.lock().unwrap(),
        [Purpose::Fill, Purpose::Bypass]
    );
    // Once the window is over, the next bypass is sent again.
    advance(BYPASS_EVERY).await;
    let (a, how) = settled(cache.step(&bypass, svc.fetch(Ok(azure("newest"))))).await;
    assert_eq!(how, How::Bypass);
    assert!(body(&a).contains("newest"));
}

#[tokio::test(start_paused = true)]
async fn entries_are_capped_and_evicted_soonest_useless_first() {
    let cache = Cache::new(CacheSettings {
        max_entries: 2,
        ..Default::default()
    });
    let svc = Service::new(true);
    let key = |n: u32| keyed(&format!("{TOKEN}?scopes=s{n}"));
    body(
        &settled(cache.step(&key(1), svc.fetch(Ok(gce("one", 3600)))))
            .await
            .0,
    );
    body(
        &settled(cache.step(&key(2), svc.fetch(Ok(gce("two", 7200)))))
            .await
            .0,
    );
    body(
        &settled(cache.step(&key(3), svc.fetch(Ok(gce("three", 7200)))))
            .await
            .0,
    );
    assert_eq!(cache.len(), 2);
    // The one that would have stopped being served first went.
    let (_, how) = settled(cache.step(&key(2), svc.fetch(Ok(gce("x", 60))))).await;
    assert_eq!(how, How::Hit);
    assert!(!cache.inner.lock().slots.contains_key(&key(1).key));
    // Every slot waiting on the service: no room, the request goes on its own.
    let closed = Service::new(false);
    let cache = Cache::new(CacheSettings {
        max_entries: 1,
        ..Default::default()
    });
    let _waiting = cache.step(&key(1), closed.fetch(Ok(gce("one", 3600))));
    assert!(matches!(
        cache.step(&key(2), closed.fetch(Ok(gce("two", 3600)))),
        Step::Pass
    ));
    let (a, how) = cache
        .get(&key(2), later(), |_| {
            async { Ok(gce("direct", 3600)) }.boxed()
        })
        .await;
    assert_eq!(how, How::Full);
    assert!(body(&a).contains("direct"));
}

#[test]
fn a_served_token_counts_its_lifetime_from_now() {
    let t0 = Instant::now();
    let s = gce("tok", 3600);
    let parsed = expiry::parse(Kind::GceToken, &s.body).unwrap();
    let entry = Entry {
        stored: s,
        life: Life::Token {
            fetched_at: t0,
            expires_at: t0 + Duration::from_secs(3600),
            serve_until: t0 + Duration::from_secs(3300),
            relative: parsed.relative,
        },
    };
    let left = |at: u64| {
        let b = entry.serve(t0 + Duration::from_millis(at)).body;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["expires_in"].as_u64().unwrap()
    };
    assert_eq!(left(0), 3600);
    assert_eq!(left(500), 3599);
    assert_eq!(left(1000), 3599);
    assert_eq!(left(600_000), 3000);
    assert!(left(3_000_000) < left(2_000_000));
}

#[tokio::test(start_paused = true)]
async fn documents_are_held_for_their_ttl_and_never_refreshed() {
    let cache = Cache::new(CacheSettings {
        metadata_ttl: Duration::from_secs(60),
        ..Default::default()
    });
    let k = keyed("/computeMetadata/v1/project/project-id");
    let svc = Service::new(true);
    body(
        &settled(cache.step(&k, svc.fetch(Ok(stored(200, "proj")))))
            .await
            .0,
    );
    for _ in 0..3 {
        let (a, how) = settled(cache.step(&k, svc.fetch(Ok(stored(200, "other"))))).await;
        assert_eq!((how, body(&a).as_str()), (How::Hit, "proj"));
        advance(Duration::from_secs(19)).await;
    }
    assert_eq!(svc.calls(), 1);
    // Past its 60 s: asked again.
    advance(Duration::from_secs(3)).await;
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(stored(200, "other"))))).await;
    assert_eq!((how, body(&a).as_str()), (How::Miss, "other"));
}

#[tokio::test(start_paused = true)]
async fn a_hit_counts_the_tokens_lifetime_from_now() {
    let calendar = Calendar::new();
    let cache = calendar.cache(CacheSettings::default());
    let k = keyed("/metadata/identity/oauth2/token?resource=r");
    let svc = Service::new(true);
    let first = json(
        &settled(cache.step(&k, svc.fetch(Ok(calendar.azure("tok-1", 3600)))))
            .await
            .0,
    );
    assert_eq!(seconds(&first, "expires_in"), 3600);
    advance(Duration::from_millis(1100)).await;
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(calendar.azure("tok-2", 3600))))).await;
    assert_eq!((how, svc.calls()), (How::Hit, 1));
    let v = json(&a);
    assert_eq!(v["access_token"], "tok-1");
    // Relative lifetimes count what is left now; the absolute one stays as issued.
    assert_eq!(seconds(&v, "expires_in"), 3598);
    assert_eq!(seconds(&v, "ext_expires_in"), 3598);
    assert_eq!(v["expires_on"], first["expires_on"]);
    let on = seconds(&v, "expires_on") - calendar.unix();
    assert!(on.abs_diff(3598) <= 1, "expires_on is {on} s away: {v}");
}

#[tokio::test(start_paused = true)]
async fn a_token_is_never_served_with_less_than_its_minimum_life_left() {
    let calendar = Calendar::new();
    let cache = calendar.cache(CacheSettings::default());
    let k = keyed("/metadata/identity/oauth2/token?resource=r");
    // The service issues tok-1, tok-2, ...: each servable for two seconds, then due.
    let min = AZURE_MIN_REMAINING.as_secs();
    let issued = AtomicUsize::new(0);
    let fetch = |_| -> Fetch {
        let n = issued.fetch_add(1, SeqCst) + 1;
        let answer = calendar.azure(&format!("tok-{n}"), min + 2);
        async move { Ok(answer) }.boxed()
    };
    let mut tokens = std::collections::HashSet::new();
    let mut answered = 0;
    while Instant::now() < calendar.start + Duration::from_secs(5) {
        let (a, _) = settled(cache.step(&k, fetch)).await;
        let v = json(&a);
        let left = seconds(&v, "expires_on").saturating_sub(calendar.unix());
        assert!(left >= min, "served with {left} s left: {v}");
        assert!(seconds(&v, "expires_in") >= min, "{v}");
        tokens.insert(v["access_token"].as_str().unwrap().to_owned());
        answered += 1;
        landed(&cache, &k).await;
        advance(Duration::from_millis(50)).await;
    }
    assert!(tokens.len() >= 2, "a due token is replaced: {tokens:?}");
    let asked = issued.load(SeqCst);
    assert!(
        asked < answered / 4,
        "{asked} requests to the service for {answered} answers"
    );
}
