//! The broker on tokio's paused clock, against a stand-in STS that counts its calls and
//! answers as scripted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures::FutureExt;

use super::*;
use crate::assume::spec::RoleSpec;
use crate::assume::sts::StsError;
use crate::assume::{RoleBroker, Session};

/// What the stand-in answers next.
#[derive(Clone)]
enum Script {
    /// Credentials lasting this long.
    Issue(Duration),
    Fail(StsError),
}

struct FakeSts {
    calls: AtomicUsize,
    script: Mutex<VecDeque<Script>>,
    /// Every call takes this long.
    delay: Duration,
    /// Follows tokio's clock, as the broker's does.
    clock: Clock,
}

impl FakeSts {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            script: Mutex::new(VecDeque::new()),
            delay,
            clock: Clock::new(),
        })
    }

    fn then(&self, s: Script) {
        self.script.lock().unwrap().push_back(s);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Fetcher<RoleSpec, Session, StsError> for FakeSts {
    fn fetch(&self, spec: RoleSpec) -> BoxFuture<'static, Result<Session, StsError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let next = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Script::Issue(Duration::from_secs(3600)));
        let delay = self.delay;
        let wall = self.clock.wall(Instant::now()) + delay;
        async move {
            tokio::time::sleep(delay).await;
            match next {
                Script::Issue(life) => Ok(Session {
                    access_key_id: format!("ASIA{n}"),
                    secret_access_key: "s".into(),
                    token: "t".into(),
                    expiration: wall + life,
                    issued_at: wall,
                    assumed_role_arn: format!(
                        "assumed-role/{}/{}",
                        spec.role_name(),
                        spec.session_name
                    ),
                    assumed_role_id: "AROA:x".into(),
                }),
                Script::Fail(e) => Err(e),
            }
        }
        .boxed()
    }
}

fn spec(role: &str) -> RoleSpec {
    RoleSpec {
        arn: format!("arn:aws:iam::123456789012:role/{role}"),
        external_id: None,
        session_name: "web".into(),
        duration_secs: 3600,
        tags: vec![],
        source_identity: None,
    }
}

fn set(specs: &[&RoleSpec]) -> BTreeSet<RoleSpec> {
    specs.iter().map(|s| (*s).clone()).collect()
}

/// Lets the broker and its calls run until nothing is ready.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn throttled() -> StsError {
    StsError::Failed {
        status: 400,
        code: "Throttling".into(),
        message: "Rate exceeded".into(),
    }
}

fn denied() -> StsError {
    StsError::Refused {
        code: "AccessDenied".into(),
        message: "not authorized to perform sts:AssumeRole".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_wanted_role_is_fetched_before_anyone_asks_and_once_for_many() {
    let sts = FakeSts::new(Duration::from_millis(300));
    let (tx, rx) = watch::channel(BTreeSet::new());
    let broker = RoleBroker::spawn(sts.clone(), rx);
    let reader = spec("reader");
    tx.send(set(&[&reader])).unwrap();
    settle().await;
    assert_eq!(sts.calls(), 1, "fetched as soon as a container wants it");
    // Twenty askers while the call is out share it.
    let asks: Vec<_> = (0..20).map(|_| broker.get(reader.clone())).collect();
    let answers = futures::future::join_all(asks).await;
    assert_eq!(sts.calls(), 1);
    assert!(answers
        .iter()
        .all(|a| a.as_ref().unwrap().access_key_id == "ASIA0"));
    // Held: later askers are answered at once.
    let t = Instant::now();
    broker.get(reader.clone()).await.unwrap();
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert_eq!(sts.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn credentials_are_fetched_again_ahead_of_every_sdks_threshold() {
    let sts = FakeSts::new(Duration::from_millis(10));
    let (tx, rx) = watch::channel(BTreeSet::new());
    let broker = RoleBroker::spawn(sts.clone(), rx);
    let reader = spec("reader");
    tx.send(set(&[&reader])).unwrap();
    let first = broker.get(reader.clone()).await.unwrap();
    let clock = Clock::new();
    // Until 30 minutes before expiry the same credentials, never less than 30 minutes
    // from their end (botocore refreshes at 15, and may stretch that by up to 10).
    tokio::time::sleep(Duration::from_secs(29 * 60)).await;
    let same = broker.get(reader.clone()).await.unwrap();
    assert_eq!(same.access_key_id, first.access_key_id);
    assert_eq!(sts.calls(), 1);
    tokio::time::sleep(Duration::from_secs(2 * 60)).await;
    settle().await;
    assert_eq!(sts.calls(), 2, "fetched again at 30 of 60 minutes");
    let fresh = broker.get(reader.clone()).await.unwrap();
    assert_ne!(fresh.access_key_id, first.access_key_id);
    let left = fresh
        .expiration
        .duration_since(clock.wall(Instant::now()))
        .unwrap();
    assert!(left > Duration::from_secs(55 * 60), "{left:?}");
    assert_eq!(
        refresh_in(
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_secs(900)
        ),
        Duration::from_secs(450)
    );
}

#[tokio::test(start_paused = true)]
async fn an_sts_outage_keeps_the_held_credentials_serving() {
    let sts = FakeSts::new(Duration::from_millis(10));
    let (tx, rx) = watch::channel(BTreeSet::new());
    let broker = RoleBroker::spawn(sts.clone(), rx);
    let reader = spec("reader");
    tx.send(set(&[&reader])).unwrap();
    let held = broker.get(reader.clone()).await.unwrap();
    for _ in 0..60 {
        sts.then(Script::Fail(throttled()));
    }
    tokio::time::sleep(Duration::from_secs(29 * 60)).await;
    // From the refresh at 30 minutes to a minute before expiry, every refresh fails:
    // the held credentials are served throughout, and STS is not hammered.
    for minute in 30..59 {
        tokio::time::sleep_until(Instant::now() + Duration::from_secs(60)).await;
        settle().await;
        let got = broker.get(reader.clone()).await.unwrap();
        assert_eq!(got.access_key_id, held.access_key_id, "minute {minute}");
    }
    let calls = sts.calls();
    assert!(
        (10..=40).contains(&calls),
        "{calls} calls in 29 minutes of outage"
    );
    // Past their expiry margin nothing is served: the asker gets the failure.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let e = broker.get(reader.clone()).await.unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    // STS back: the next attempt succeeds and serves.
    sts.script.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;
    let back = broker.get(reader.clone()).await.unwrap();
    assert_ne!(back.access_key_id, held.access_key_id);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_drops_the_credentials_and_is_remembered_for_a_while() {
    let sts = FakeSts::new(Duration::from_millis(10));
    let (tx, rx) = watch::channel(BTreeSet::new());
    let broker = RoleBroker::spawn(sts.clone(), rx);
    let reader = spec("reader");
    sts.then(Script::Fail(denied()));
    tx.send(set(&[&reader])).unwrap();
    let e = broker.get(reader.clone()).await.unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(sts.calls(), 1);
    // Asked again within the minute: the same refusal, no call.
    for _ in 0..10 {
        assert!(broker.get(reader.clone()).await.unwrap_err().is_permanent());
    }
    assert_eq!(sts.calls(), 1);
    // After it (the trust policy may have been fixed), asked again.
    tokio::time::sleep(REFUSED_FOR + Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(sts.calls(), 2);
    assert!(broker.get(reader.clone()).await.is_ok());

    // Held credentials that STS later refuses are dropped at once.
    sts.then(Script::Fail(denied()));
    tokio::time::sleep(Duration::from_secs(30 * 60 + 30)).await;
    settle().await;
    assert!(broker.get(reader.clone()).await.unwrap_err().is_permanent());
}

#[tokio::test(start_paused = true)]
async fn a_role_no_container_wants_is_dropped_and_not_refreshed() {
    let sts = FakeSts::new(Duration::from_millis(10));
    let (tx, rx) = watch::channel(BTreeSet::new());
    let broker = RoleBroker::spawn(sts.clone(), rx);
    let (reader, writer) = (spec("reader"), spec("writer"));
    tx.send(set(&[&reader, &writer])).unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sts.calls(), 2, "one call per role");
    tx.send(set(&[&writer])).unwrap();
    settle().await;
    // Hours pass: only the wanted role is refreshed.
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    settle().await;
    let refreshes = sts.calls() - 2;
    assert!(
        (5..=7).contains(&refreshes),
        "{refreshes} refreshes of writer in 3 h"
    );
    // Asked for again, the dropped role costs a new call.
    let before = sts.calls();
    broker.get(reader.clone()).await.unwrap();
    assert_eq!(sts.calls(), before + 1);
}

#[tokio::test(start_paused = true)]
async fn a_role_missed_for_a_moment_is_still_held_when_wanted_again() {
    let sts = FakeSts::new(Duration::from_millis(10));
    let (tx, rx) = watch::channel(BTreeSet::new());
    let broker = RoleBroker::spawn(sts.clone(), rx);
    let reader = spec("reader");
    tx.send(set(&[&reader])).unwrap();
    let first = broker.get(reader.clone()).await.unwrap();
    // Its container restarts, or a listing misses it: gone, and back within the grace.
    tx.send(set(&[])).unwrap();
    settle().await;
    tokio::time::sleep(KEEP_UNWANTED / 2).await;
    tx.send(set(&[&reader])).unwrap();
    settle().await;
    assert_eq!(sts.calls(), 1, "no new call for a role held a moment ago");
    assert_eq!(
        broker.get(reader.clone()).await.unwrap().access_key_id,
        first.access_key_id
    );
    // Gone for longer than the grace: dropped, and wanted again it costs a call.
    tx.send(set(&[])).unwrap();
    settle().await;
    tokio::time::sleep(KEEP_UNWANTED + Duration::from_secs(1)).await;
    tx.send(set(&[&spec("other")])).unwrap();
    settle().await;
    tx.send(set(&[&reader])).unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sts.calls(), 3, "other once, reader again");
    // Asked for by a request alone, it is kept while asked for.
    let scoped = spec("scoped");
    broker.get(scoped.clone()).await.unwrap();
    let calls = sts.calls();
    for _ in 0..5 {
        tokio::time::sleep(KEEP_UNWANTED / 2).await;
        tx.send(set(&[&reader])).unwrap();
        broker.get(scoped.clone()).await.unwrap();
    }
    assert_eq!(sts.calls(), calls, "held while asked for within the grace");
}
