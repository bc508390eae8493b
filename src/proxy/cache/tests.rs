//! The cache's behaviour with scripted requests to the service: no network, no timing
//! assertions (every wait is on a gate the test opens).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use futures::FutureExt;
use http::Method;
use tokio::sync::Semaphore;

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

#[tokio::test]
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

#[tokio::test]
async fn a_waiter_past_its_deadline_gets_a_timeout_and_the_request_still_fills_the_cache() {
    let cache = Cache::new(CacheSettings::default());
    let k = keyed(TOKEN);
    let svc = Service::new(false);
    let Step::Wait(flight, How::Miss) = cache.step(&k, svc.fetch(Ok(gce("tok", 3600)))) else {
        panic!("a miss waits");
    };
    let late = flight.wait(Instant::now()).await;
    assert!(
        matches!(late, Err(ProxyError::UpstreamTimeout(_))),
        "{late:?}"
    );
    svc.open();
    // The request went on without its caller.
    let mut how = How::Joined;
    for _ in 0..1000 {
        let (_, h) = settled(cache.step(&k, svc.fetch(Ok(gce("other", 3600))))).await;
        how = h;
        if how == How::Hit {
            break;
        }
    }
    assert_eq!((how, svc.calls()), (How::Hit, 1));
}

#[tokio::test]
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

#[tokio::test]
async fn failures_are_remembered_for_the_error_window_only() {
    let k = keyed(TOKEN);
    for (errors, remembered) in [(Duration::from_secs(60), true), (Duration::ZERO, false)] {
        let cache = Cache::new(CacheSettings {
            errors,
            ..Default::default()
        });
        let svc = Service::new(true);
        for answer in [Ok(stored(500, "broken")), Err(())] {
            let (a, how) = settled(cache.step(&k, svc.fetch(answer.clone()))).await;
            assert_eq!(how, How::Miss);
            let again = svc.calls();
            let (b, how) = settled(cache.step(&k, svc.fetch(Ok(gce("tok", 3600))))).await;
            if remembered {
                assert_eq!((how, svc.calls()), (How::Remembered, again));
                assert_eq!(a.is_ok(), b.is_ok());
                if let Ok(b) = b {
                    assert_eq!(b.status, 500);
                }
                // Until the window ends: a new cache stands in for the time passing.
                cache.inner.lock().slots.clear();
            } else {
                assert_eq!((how, svc.calls()), (How::Miss, again + 1));
                assert!(body(&b).contains("tok"));
                cache.inner.lock().slots.clear();
            }
        }
    }
}

#[tokio::test]
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

#[tokio::test]
async fn a_failed_refresh_keeps_serving_the_token_and_tries_again_later() {
    let cache = Cache::new(CacheSettings::default());
    let k = keyed(TOKEN);
    let svc = Service::new(true);
    // A minute of serving window: due for a refresh from the start.
    let life = GCE_MIN_REMAINING.as_secs() + 60;
    body(
        &settled(cache.step(&k, svc.fetch(Ok(gce("tok-1", life)))))
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
    // The refresh settles; the token is still served, no new refresh for a while.
    for _ in 0..1000 {
        if cache.inner.lock().slots[&k.key].flight.is_none() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let (a, how) = settled(cache.step(&k, svc.fetch(Ok(gce("tok-2", life))))).await;
    assert_eq!((how, svc.calls()), (How::Hit, 2));
    assert!(body(&a).contains("tok-1"));
    let slot = &cache.inner.lock().slots[&k.key];
    assert!(slot.refresh_at.unwrap() >= Instant::now() + timing::MIN_RETRY / 2);
    assert!(slot.failed.is_none(), "a valid token is not a failure");
}

#[tokio::test]
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
    let mut served = String::new();
    for _ in 0..1000 {
        let (a, _) = settled(cache.step(&k, svc.fetch(Ok(gce("tok-3", 3600))))).await;
        served = body(&a);
        if served.contains("tok-2") {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(served.contains("tok-2"), "{served}");
    assert_eq!(svc.calls(), 2, "one fill, one refresh");
}

#[tokio::test]
async fn bypass_reaches_the_service_at_most_once_per_key_in_its_window() {
    let cache = Cache::new(CacheSettings::default());
    let plain = keyed(&format!("{}?resource=r", "/metadata/identity/oauth2/token"));
    let bypass = keyed("/metadata/identity/oauth2/token?resource=r&bypass_cache=true");
    let svc = Service::new(true);
    let azure = |t: &str| {
        stored(
            200,
            &format!(
                r#"{{"access_token":"{t}","expires_in":"86399","expires_on":"{}"}}"#,
                unix_now() + 86_399
            ),
        )
    };
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
}

#[tokio::test]
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

#[tokio::test]
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
    }
    assert_eq!(svc.calls(), 1);
}
