//! The one owner of assumed-role credentials. Askers (request handlers), the set of
//! role sessions the running containers want, and the finished STS calls all arrive
//! at one task; it alone changes what is held.
//!
//! - A session a container wants is fetched when it appears, before its first request.
//! - Any number of askers while a call is out wait for that one call.
//! - Held credentials are fetched again ahead of expiry (see [`refresh_in`]), so every
//!   answer's `Expiration` lies beyond every SDK's own refresh threshold.
//! - An STS failure worth trying again keeps the held credentials serving while they
//!   are valid (with a warning) and is retried with backoff; a refusal (`AccessDenied`,
//!   a role that does not exist) drops them and is remembered for a minute.
//! - A session no running container wants any more is dropped.
//!
//! Time is tokio's, so the tests drive it; the wall-clock time compared with STS's
//! `Expiration` is derived from it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::spec::RoleSpec;
use super::sts::StsError;
use super::Session;

/// Fetch again when this much of a session's life is left (or half its life, if that
/// is less): botocore refreshes 15 min ahead (10 min mandatory), the Java SDK's
/// instance provider 15 min.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(30 * 60);
/// Held credentials are no longer served this close to their expiry.
const SERVE_MARGIN: Duration = Duration::from_secs(60);
/// How long a refusal is believed before the role is asked for again.
const REFUSED_FOR: Duration = Duration::from_secs(60);
/// Backoff after failures worth trying again: doubles from the first, up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What an asker gets: the session, or why there is none.
pub type Answer = Result<Arc<Session>, Arc<StsError>>;

/// Calls STS (or stands in for it in tests).
pub trait Assumer: Send + Sync + 'static {
    fn assume(&self, spec: RoleSpec) -> BoxFuture<'static, Result<Session, StsError>>;
}

/// How to reach the broker task.
#[derive(Clone)]
pub struct Broker {
    tx: mpsc::UnboundedSender<(RoleSpec, oneshot::Sender<Answer>)>,
}

impl Broker {
    /// Starts the task. `wanted`: the role sessions of the running containers.
    pub fn spawn(assumer: Arc<dyn Assumer>, wanted: watch::Receiver<BTreeSet<RoleSpec>>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            assumer,
            entries: HashMap::new(),
            jobs: JoinSet::new(),
            clock: Clock::new(),
        };
        tokio::spawn(task.run(rx, wanted));
        Self { tx }
    }

    /// The credentials for `spec`, waiting for STS if none are held.
    pub async fn get(&self, spec: RoleSpec) -> Answer {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            Arc::new(StsError::Unreachable(
                "the credential broker stopped".into(),
            ))
        };
        self.tx.send((spec, tx)).map_err(|_| gone())?;
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

#[derive(Default)]
struct Entry {
    held: Option<Arc<Session>>,
    fetching: bool,
    waiters: Vec<oneshot::Sender<Answer>>,
    /// When to fetch again (ahead of expiry, or after a failure).
    again_at: Option<Instant>,
    /// A refusal, believed until the instant.
    refused: Option<(Arc<StsError>, Instant)>,
    /// Failures worth trying again since the last success.
    failures: u32,
    /// A running container wants it.
    wanted: bool,
}

struct Task {
    assumer: Arc<dyn Assumer>,
    entries: HashMap<RoleSpec, Entry>,
    jobs: JoinSet<(RoleSpec, Result<Session, StsError>)>,
    clock: Clock,
}

/// How long after `now` to fetch a session again that expires at `expiration`.
pub fn refresh_in(now: SystemTime, expiration: SystemTime) -> Duration {
    let life = expiration.duration_since(now).unwrap_or_default();
    (life - REFRESH_AHEAD.min(life / 2)).max(Duration::from_secs(1))
}

impl Task {
    async fn run(
        mut self,
        mut asks: mpsc::UnboundedReceiver<(RoleSpec, oneshot::Sender<Answer>)>,
        wanted: watch::Receiver<BTreeSet<RoleSpec>>,
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
                    Err(e) => warn!(error = %e, "an STS call ended abnormally"),
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
        let due: Vec<RoleSpec> = self
            .entries
            .iter()
            .filter(|(_, e)| e.wanted && !e.fetching && e.again_at.is_some_and(|t| t <= now))
            .map(|(s, _)| s.clone())
            .collect();
        for spec in due {
            debug!(role = %spec.arn, session = %spec.session_name, "fetching role credentials ahead of expiry");
            self.start(spec);
        }
    }

    fn start(&mut self, spec: RoleSpec) {
        let e = self.entries.entry(spec.clone()).or_default();
        if e.fetching {
            return;
        }
        e.fetching = true;
        e.again_at = None;
        let fut = self.assumer.assume(spec.clone());
        self.jobs.spawn(async move { (spec, fut.await) });
    }

    fn ask(&mut self, spec: RoleSpec, tx: oneshot::Sender<Answer>) {
        let now = Instant::now();
        let wall = self.clock.wall(now);
        let e = self.entries.entry(spec.clone()).or_default();
        if let Some(s) = e.held.as_ref().filter(|s| serveable(s, wall)) {
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

    fn want(&mut self, set: BTreeSet<RoleSpec>) {
        self.entries.retain(|spec, e| {
            e.wanted = set.contains(spec);
            e.wanted || e.fetching || !e.waiters.is_empty()
        });
        for spec in set {
            let e = self.entries.entry(spec.clone()).or_default();
            e.wanted = true;
            if e.held.is_none() && !e.fetching && e.refused.is_none() && e.failures == 0 {
                info!(role = %spec.arn, session = %spec.session_name, "a container wants this role: fetching its credentials");
                self.start(spec);
            }
        }
    }

    fn fetched(&mut self, spec: RoleSpec, result: Result<Session, StsError>) {
        let now = Instant::now();
        let wall = self.clock.wall(now);
        let Some(e) = self.entries.get_mut(&spec) else {
            return;
        };
        e.fetching = false;
        let answer: Answer = match result {
            Ok(session) => {
                let session = Arc::new(session);
                e.again_at = Some(now + refresh_in(wall, session.expiration));
                info!(
                    role = %spec.arn,
                    assumed = %session.assumed_role_arn,
                    expires = %crate::providers::aws_doc::timestamp(session.expiration),
                    "assumed role"
                );
                e.held = Some(session.clone());
                e.failures = 0;
                e.refused = None;
                Ok(session)
            }
            Err(err) if err.is_permanent() => {
                warn!(role = %spec.arn, error = %err, "STS refused the role: its credentials are dropped");
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
                match e.held.as_ref().filter(|s| serveable(s, wall)) {
                    Some(s) => {
                        warn!(
                            role = %spec.arn,
                            error = %err,
                            until = %crate::providers::aws_doc::timestamp(s.expiration),
                            retry_in = ?backoff,
                            "STS failed: the held credentials keep serving"
                        );
                        Ok(s.clone())
                    }
                    None => {
                        warn!(role = %spec.arn, error = %err, retry_in = ?backoff, "STS failed and no credentials are held");
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

fn serveable(s: &Session, wall: SystemTime) -> bool {
    wall + SERVE_MARGIN < s.expiration
}

/// The next set of wanted sessions; never, once no one can send one (the last set
/// stays in force).
async fn next_wanted(
    w: &mut Option<watch::Receiver<BTreeSet<RoleSpec>>>,
) -> Option<BTreeSet<RoleSpec>> {
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
