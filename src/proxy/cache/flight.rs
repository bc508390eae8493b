//! A request to the service on behalf of every caller that wants its answer: run in a
//! task of its own, shared by whoever waits on it, and settled into the cache (entry
//! stored, failure remembered, refresh rescheduled) before any waiter sees the answer.

use std::sync::Arc;

use futures::future::{FutureExt, Shared};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{expiry, timing, Entry, Fetch, Inner, Keyed, Kind, Life, Purpose, Stored};
use crate::proxy::{error_chain, ProxyError};

/// How much longer a refreshed token must be servable to replace the one held.
const FRESHER_BY: std::time::Duration = std::time::Duration::from_secs(1);

/// The answer of a request to the service, shared.
pub type Outcome = Result<Arc<Stored>, Arc<ProxyError>>;

/// A request to the service under way; clones wait on the same answer.
#[derive(Clone)]
pub struct Flight {
    id: u64,
    answer: Shared<futures::future::BoxFuture<'static, Outcome>>,
}

impl Flight {
    /// Its answer, or the proxy's timeout answer when `deadline` comes first (the
    /// request goes on without this caller).
    pub async fn wait(self, deadline: Instant) -> Result<Stored, ProxyError> {
        let from = Instant::now();
        match tokio::time::timeout_at(deadline, self.answer).await {
            Ok(outcome) => answer(&outcome),
            Err(_) => Err(ProxyError::UpstreamTimeout(
                deadline.saturating_duration_since(from),
            )),
        }
    }
}

/// A shared outcome as one caller's answer.
pub fn answer(outcome: &Outcome) -> Result<Stored, ProxyError> {
    match outcome {
        Ok(stored) => Ok(Stored::clone(stored)),
        Err(e) => Err(ProxyError::Coalesced(e.clone())),
    }
}

/// Starts `fetch` for `keyed` in a task of its own. Called under the map's lock; the
/// task takes it only once the answer is in.
pub fn start(inner: &Arc<Inner>, keyed: &Keyed, purpose: Purpose, fetch: Fetch) -> Flight {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (inner, key) = (inner.clone(), keyed.key.clone());
    let (kind, path) = (keyed.kind, keyed.path().to_owned());
    let task = tokio::spawn(async move {
        // Made on first poll: a task dropped unpolled (by a runtime that is stopping,
        // inside `spawn`, under the caller's lock) never takes the lock itself.
        let landing = Landing { inner, key, id };
        let fetched_at = Instant::now();
        let outcome: Outcome = fetch.await.map(Arc::new).map_err(Arc::new);
        let note = landing.settle(kind, purpose, &outcome, fetched_at);
        if purpose == Purpose::Refresh {
            let answered = matches!(&outcome, Ok(s) if s.status.is_success());
            let result = if answered { "ok" } else { "failed" };
            crate::metrics::get()
                .refreshes
                .get_or_create(&crate::metrics::ResultLabels { result })
                .inc();
        }
        if let Some(note) = note {
            warn!(kind = kind.name(), path = %path, failure = %note, "refreshing a cached token failed: the cached one is served while it has enough life left, and the refresh is tried again");
        }
        outcome
    });
    let answer = task
        .map(|joined| match joined {
            Ok(outcome) => outcome,
            // The task panicked or the runtime is stopping: every waiter gets an
            // answer, never a hang.
            Err(e) => Err(Arc::new(ProxyError::UpstreamFailed(Box::new(e)))),
        })
        .boxed()
        .shared();
    Flight { id, answer }
}

/// Ends a flight in the map: on settling, and on drop should the task never settle
/// (a panic, a runtime stopping), so that the key is never left waiting forever.
struct Landing {
    inner: Arc<Inner>,
    key: String,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut map = self.inner.lock();
        if let Some(slot) = map.slots.get_mut(&self.key) {
            if slot.flight.as_ref().is_some_and(|f| f.id == self.id) {
                slot.flight = None;
            }
        }
    }
}

/// How the cache takes an answer.
enum Verdict {
    /// A token or document to hold.
    Keep(Arc<Entry>, Option<timing::Timing>),
    /// The service failed: remembered briefly.
    Failed(String),
    /// An answer to pass on but not to hold (a refusal, a token with too little life).
    Pass(String),
}

impl Landing {
    /// Stores what `outcome` calls for; returns why a refresh failed, for the log.
    fn settle(
        &self,
        kind: Kind,
        purpose: Purpose,
        outcome: &Outcome,
        fetched_at: Instant,
    ) -> Option<String> {
        let settings = &self.inner.settings;
        let now = Instant::now();
        let unix_now = (self.inner.calendar)();
        let verdict = judge(
            kind,
            outcome,
            fetched_at,
            now,
            unix_now,
            settings.metadata_ttl,
        );
        let mut map = self.inner.lock();
        let slot = map.slots.get_mut(&self.key)?;
        if slot.flight.as_ref().is_some_and(|f| f.id == self.id) {
            slot.flight = None;
        }
        let held = slot
            .entry
            .as_ref()
            .filter(|e| now < e.until())
            .map(|e| e.until());
        match (verdict, held) {
            (Verdict::Keep(entry, t), held) => {
                // The same token fetched again can look a fraction of a second younger.
                let fresher = held.is_none_or(|h| entry.until() > h + FRESHER_BY)
                    || purpose == Purpose::Bypass;
                if fresher {
                    slot.refresh_at = t.map(|t| t.refresh_at);
                    slot.entry = Some(entry);
                    slot.failed = None;
                } else if let Some(h) = held {
                    // The service still hands out the token held: ask again later.
                    slot.refresh_at = Some(timing::retry_at(now, h, rand::random()));
                    debug!(kind = kind.name(), "refresh brought no fresher token");
                }
                None
            }
            (Verdict::Failed(why) | Verdict::Pass(why), Some(h)) => {
                slot.refresh_at = Some(timing::retry_at(now, h, rand::random()));
                Some(why)
            }
            (Verdict::Failed(_), None) if !settings.errors.is_zero() => {
                slot.failed = Some((outcome.clone(), now + settings.errors));
                None
            }
            _ => None,
        }
    }
}

/// What `outcome` (for a request of `kind` sent at `fetched_at`) is to the cache, at
/// `now` (`unix_now` in calendar time).
fn judge(
    kind: Kind,
    outcome: &Outcome,
    fetched_at: Instant,
    now: Instant,
    unix_now: u64,
    document_ttl: std::time::Duration,
) -> Verdict {
    let stored = match outcome {
        Ok(s) => s,
        Err(e) => {
            return match e.as_ref() {
                ProxyError::UpstreamUnreachable(_)
                | ProxyError::UpstreamFailed(_)
                | ProxyError::UpstreamTimeout(_)
                | ProxyError::UpstreamTooLarge => Verdict::Failed(error_chain(e.as_ref())),
                // The proxy's own pacing, a bad target: nothing the service did.
                other => Verdict::Pass(error_chain(other)),
            };
        }
    };
    let status = stored.status;
    if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
        return Verdict::Failed(format!("the service answered {status}"));
    }
    if status != http::StatusCode::OK {
        return Verdict::Pass(format!("the service answered {status}"));
    }
    if kind == Kind::Document {
        let entry = Entry {
            stored: Stored::clone(stored),
            life: Life::Document {
                until: now + document_ttl,
            },
        };
        return Verdict::Keep(Arc::new(entry), None);
    }
    let Some(parsed) = expiry::parse(kind, &stored.body) else {
        return Verdict::Pass("the answer has no expiry the cache can read".into());
    };
    // Absolute times count from now; relative ones from when the request left (the
    // service answered later than that, so its count ends no earlier than this).
    let left = parsed.expiry.seconds_left(unix_now).unwrap_or(0);
    let mut expires_at = now + std::time::Duration::from_secs(left);
    if let Some(r) = parsed.expiry.relative {
        expires_at = expires_at.min(fetched_at + std::time::Duration::from_secs(r));
    }
    let min = timing::min_remaining(kind);
    let Some(t) = timing::timing(fetched_at, expires_at, min, rand::random()) else {
        return Verdict::Pass(format!(
            "the token has no more than {} s left",
            min.as_secs()
        ));
    };
    let entry = Entry {
        stored: Stored::clone(stored),
        life: Life::Token {
            fetched_at,
            expires_at,
            serve_until: t.serve_until,
            relative: parsed.relative,
        },
    };
    Verdict::Keep(Arc::new(entry), Some(t))
}
