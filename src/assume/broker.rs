//! The one owner of credentials obtained for containers (AWS role sessions, GCE
//! impersonated tokens). Askers (request handlers), the set of keys the running
//! containers want, and the finished calls all arrive at one task; it alone changes
//! what is held.
//!
//! - What a container wants is fetched when it appears, before its first request.
//! - Any number of askers while a call is out wait for that one call.
//! - Held credentials are fetched again ahead of expiry (see [`refresh_in`]), so every
//!   answer's `Expiration` lies beyond every SDK's own refresh threshold.
//! - A failure worth trying again keeps the held credentials serving while they are
//!   valid (with a warning) and is retried with backoff; a refusal (`AccessDenied`, a
//!   role or account that does not exist) drops them and is remembered for a minute.
//! - What no running container wants any more is dropped.
//!
//! Time is tokio's, so the tests drive it; the wall-clock time compared with the
//! services' expiry times is derived from it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Fetch again when this much of a session's life is left (or half its life, if that
/// is less): botocore refreshes 15 min ahead (10 min mandatory), the Java SDK's
/// instance provider 15 min.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(30 * 60);
/// Held credentials are no longer served this close to their expiry.
const SERVE_MARGIN: Duration = Duration::from_secs(60);
/// How long a refusal is believed before the role is asked for again.
const REFUSED_FOR: Duration = Duration::from_secs(60);
/// How long what no container wants any more is kept (not refreshed) before it is
/// dropped: a container restarted, or one Docker's listing missed for a moment, finds
/// it still held.
pub const KEEP_UNWANTED: Duration = Duration::from_secs(120);
/// Backoff after failures worth trying again: doubles from the first, up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What credentials are held under: a role session, an account and its scopes.
pub trait Key: Clone + Eq + Hash + Ord + Debug + Send + Sync + 'static {
    /// For the log: what is fetched (never a secret).
    fn describe(&self) -> String;
    /// For the metrics: which service is called.
    fn service() -> &'static str;
}

/// Credentials as held: when they expire, and what the log may say of them.
pub trait Held: Send + Sync + 'static {
    fn expiration(&self) -> SystemTime;
    fn describe(&self) -> String;
}

/// Why a fetch failed.
pub trait Failure: std::error::Error + Send + Sync + 'static {
    /// Asking again will not help (a refusal of the role or account itself).
    fn is_permanent(&self) -> bool;
    /// No answer at all (the broker is gone, a deadline passed).
    fn unreachable(reason: String) -> Self;
}

/// What an asker gets: the credentials, or why there are none.
pub type Answer<V, E> = Result<Arc<V>, Arc<E>>;

/// Fetches credentials (or stands in for the service in tests).
pub trait Fetcher<K, V, E>: Send + Sync + 'static {
    fn fetch(&self, key: K) -> BoxFuture<'static, Result<V, E>>;
}

type Ask<K, V, E> = (K, oneshot::Sender<Answer<V, E>>);

/// How to reach the broker task.
pub struct Broker<K, V, E> {
    tx: mpsc::UnboundedSender<Ask<K, V, E>>,
}

impl<K, V, E> Clone for Broker<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<K: Key, V: Held, E: Failure> Broker<K, V, E> {
    /// Starts the task. `wanted`: the keys of the running containers.
    pub fn spawn(fetcher: Arc<dyn Fetcher<K, V, E>>, wanted: watch::Receiver<BTreeSet<K>>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            fetcher,
            entries: HashMap::new(),
            jobs: JoinSet::new(),
            clock: Clock::new(),
        };
        tokio::spawn(task.run(rx, wanted));
        Self { tx }
    }

    /// The credentials for `key`, waiting for the service if none are held.
    pub async fn get(&self, key: K) -> Answer<V, E> {
        let (tx, rx) = oneshot::channel();
        let gone = || Arc::new(E::unreachable("the credential broker stopped".into()));
        self.tx.send((key, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Wall-clock time that follows tokio's clock.
struct Clock {
    at: Instant,
    wall: SystemTime,
}

impl Clock {
    fn new() -> Self {
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn wall(&self, t: Instant) -> SystemTime {
        self.wall + t.duration_since(self.at)
    }
}

struct Entry<V, E> {
    held: Option<Arc<V>>,
    fetching: bool,
    waiters: Vec<oneshot::Sender<Answer<V, E>>>,
    /// When to fetch again (ahead of expiry, or after a failure).
    again_at: Option<Instant>,
    /// A refusal, believed until the instant.
    refused: Option<(Arc<E>, Instant)>,
    /// Failures worth trying again since the last success.
    failures: u32,
    /// A running container wants it.
    wanted: bool,
    /// Since when no running container has wanted it.
    unwanted_since: Option<Instant>,
}

impl<V, E> Default for Entry<V, E> {
    fn default() -> Self {
        Self {
            held: None,
            fetching: false,
            waiters: Vec::new(),
            again_at: None,
            refused: None,
            failures: 0,
            wanted: false,
            unwanted_since: None,
        }
    }
}

struct Task<K, V, E> {
    fetcher: Arc<dyn Fetcher<K, V, E>>,
    entries: HashMap<K, Entry<V, E>>,
    jobs: JoinSet<(K, Result<V, E>)>,
    clock: Clock,
}

/// How long after `now` to fetch a session again that expires at `expiration`.
pub fn refresh_in(now: SystemTime, expiration: SystemTime) -> Duration {
    let life = expiration.duration_since(now).unwrap_or_default();
    (life - REFRESH_AHEAD.min(life / 2)).max(Duration::from_secs(1))
}

impl<K: Key, V: Held, E: Failure> Task<K, V, E> {
    async fn run(
        mut self,
        mut asks: mpsc::UnboundedReceiver<Ask<K, V, E>>,
        wanted: watch::Receiver<BTreeSet<K>>,
    ) {
        let mut wanted = Some(wanted);
        let first = wanted.as_mut().map(|w| w.borrow_and_update().clone());
        self.want(first.unwrap_or_default());
        loop {
            let next = self.next_due();
            tokio::select! {
                ask = asks.recv() => match ask {
                    Some((spec, tx)) => self.ask(spec, tx),
                    None => return,
                },
                Some(set) = next_wanted(&mut wanted) => self.want(set),
                Some(done) = self.jobs.join_next() => match done {
                    Ok((spec, result)) => self.fetched(spec, result),
                    Err(e) => warn!(error = %e, "a credential fetch ended abnormally"),
                },
                _ = sleep_until(next) => self.fetch_due(),
            }
        }
    }

    /// The earliest instant a wanted entry is due to be fetched again.
    fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| e.wanted && !e.fetching)
            .filter_map(|e| e.again_at)
            .min()
    }

    fn fetch_due(&mut self) {
        let now = Instant::now();
        self.prune(now);
        let due: Vec<K> = self
            .entries
            .iter()
            .filter(|(_, e)| e.wanted && !e.fetching && e.again_at.is_some_and(|t| t <= now))
            .map(|(s, _)| s.clone())
            .collect();
        for key in due {
            debug!(what = %key.describe(), "fetching credentials again");
            self.start(key);
        }
    }

    fn start(&mut self, key: K) {
        let e = self.entries.entry(key.clone()).or_default();
        if e.fetching {
            return;
        }
        e.fetching = true;
        e.again_at = None;
        let fut = self.fetcher.fetch(key.clone());
        self.jobs.spawn(async move { (key, fut.await) });
    }

    fn ask(&mut self, spec: K, tx: oneshot::Sender<Answer<V, E>>) {
        let now = Instant::now();
        let wall = self.clock.wall(now);
        let e = self.entries.entry(spec.clone()).or_default();
        if !e.wanted {
            // Asked for without a container wanting it (a token for other scopes, an ID
            // token): kept while it is asked for.
            e.unwanted_since = Some(now);
        }
        if let Some(s) = e.held.as_ref().filter(|s| serveable(s.as_ref(), wall)) {
            let _ = tx.send(Ok(s.clone()));
            return;
        }
        if let Some((err, until)) = &e.refused {
            if now < *until {
                let _ = tx.send(Err(err.clone()));
                return;
            }
        }
        e.waiters.push(tx);
        self.start(spec);
    }

    fn want(&mut self, set: BTreeSet<K>) {
        let now = Instant::now();
        let wall = self.clock.wall(now);
        for (spec, e) in self.entries.iter_mut() {
            if e.wanted && !set.contains(spec) {
                e.wanted = false;
                e.unwanted_since = Some(now);
            }
        }
        self.prune(now);
        for spec in set {
            let e = self.entries.entry(spec.clone()).or_default();
            e.wanted = true;
            e.unwanted_since = None;
            let held = e.held.as_ref().is_some_and(|h| serveable(h.as_ref(), wall));
            if !held && !e.fetching && e.refused.is_none() && e.failures == 0 {
                info!(what = %spec.describe(), "a container wants these credentials: fetching them");
                self.start(spec);
            }
        }
    }

    /// Drops what no container has wanted for [`KEEP_UNWANTED`] (unless a call or an
    /// asker is waiting on it).
    fn prune(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            let kept = e
                .unwanted_since
                .is_some_and(|t| now.duration_since(t) < KEEP_UNWANTED);
            e.wanted || kept || e.fetching || !e.waiters.is_empty()
        });
    }

    fn fetched(&mut self, spec: K, result: Result<V, E>) {
        let now = Instant::now();
        let wall = self.clock.wall(now);
        let Some(e) = self.entries.get_mut(&spec) else {
            return;
        };
        e.fetching = false;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) if err.is_permanent() => "refused",
            Err(_) => "failed",
        };
        crate::metrics::get()
            .fetches
            .get_or_create(&crate::metrics::FetchLabels {
                service: K::service(),
                result: outcome,
            })
            .inc();
        let answer: Answer<V, E> = match result {
            Ok(session) => {
                let session = Arc::new(session);
                e.again_at = Some(now + refresh_in(wall, session.expiration()));
                info!(
                    what = %spec.describe(),
                    got = %session.describe(),
                    expires = %crate::providers::aws_doc::timestamp(session.expiration()),
                    "credentials fetched"
                );
                e.held = Some(session.clone());
                e.failures = 0;
                e.refused = None;
                Ok(session)
            }
            Err(err) if err.is_permanent() => {
                warn!(what = %spec.describe(), error = %err, "refused: the held credentials are dropped");
                let err = Arc::new(err);
                e.held = None;
                e.failures = 0;
                e.refused = Some((err.clone(), now + REFUSED_FOR));
                e.again_at = Some(now + REFUSED_FOR);
                Err(err)
            }
            Err(err) => {
                e.failures += 1;
                let backoff = RETRY_FIRST
                    .saturating_mul(1 << (e.failures - 1).min(10))
                    .min(RETRY_MAX);
                e.again_at = Some(now + backoff);
                let err = Arc::new(err);
                match e.held.as_ref().filter(|s| serveable(s.as_ref(), wall)) {
                    Some(s) => {
                        warn!(
                            what = %spec.describe(),
                            error = %err,
                            until = %crate::providers::aws_doc::timestamp(s.expiration()),
                            retry_in = ?backoff,
                            "fetch failed: the held credentials keep serving"
                        );
                        Ok(s.clone())
                    }
                    None => {
                        warn!(what = %spec.describe(), error = %err, retry_in = ?backoff, "fetch failed and no credentials are held");
                        e.held = None;
                        Err(err)
                    }
                }
            }
        };
        for w in e.waiters.drain(..) {
            let _ = w.send(answer.clone());
        }
        if !e.wanted && e.waiters.is_empty() && e.held.is_none() {
            self.entries.remove(&spec);
        }
    }
}

fn serveable<V: Held>(s: &V, wall: SystemTime) -> bool {
    wall + SERVE_MARGIN < s.expiration()
}

/// The next set of wanted sessions; never, once no one can send one (the last set
/// stays in force).
async fn next_wanted<K: Key>(w: &mut Option<watch::Receiver<BTreeSet<K>>>) -> Option<BTreeSet<K>> {
    let Some(rx) = w else {
        return futures::future::pending().await;
    };
    if rx.changed().await.is_ok() {
        return Some(rx.borrow_and_update().clone());
    }
    *w = None;
    None
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
#[path = "broker_tests.rs"]
mod tests;
