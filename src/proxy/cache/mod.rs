//! Token, credential and (optionally) metadata answers of the real metadata service,
//! held in front of it, with concurrent requests for the same answer coalesced into
//! one. Upstream mode only: the emulator's answers are local.
//!
//! Why: Azure IMDS allows 5 requests a second per VM (20, and 5 at once, for managed
//! identity) and answers `429` beyond; the SDKs give up after about a second. Forty
//! containers renewing their tokens at once must be one request, not forty.
//!
//! - What is held and under which key: [`key`] (the key is what the upstream is asked,
//!   identity included, so one identity's token never reaches another).
//! - How long: [`timing`] (served only while the token has more than its provider's
//!   `min_remaining` left; refreshed in the background before that).
//! - The answer as served: [`expiry`] (relative lifetimes rewritten to what is left).
//!
//! One map behind one `std::sync::Mutex`, held only to look up or settle an entry,
//! never across an await: a hit clones an `Arc` under the lock and builds its answer
//! outside it. A lookup costs less than parsing the request did, so one lock is not a
//! bottleneck at any rate the metadata service could serve; sharding would make the
//! entry cap and its eviction rule per shard instead of one. Requests to the service
//! run in spawned tasks ("flights"): a caller that gives up or panics never takes the
//! request (and the other callers waiting on it) with it.

mod expiry;
mod flight;
mod key;
mod timing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode};
// Tokio's clock, which is the system's monotonic clock unless a test pauses it: every
// expiry, refresh point and deadline below is then driven by the test.
use tokio::time::Instant;

pub use crate::config::CacheSettings;
pub use key::{classify, without_bypass, Keyed, Kind};
pub use timing::{AWS_MIN_REMAINING, AZURE_MIN_REMAINING, GCE_MIN_REMAINING};

use super::upstream::Answer;
use super::{headers, ProxyError};
use flight::{Flight, Outcome};
use timing::Decision;

/// At most one `bypass_cache=true` per key reaches the service in this time; the
/// others get the cached (or coalesced) answer.
pub const BYPASS_EVERY: Duration = Duration::from_secs(5);
/// How often, at most, the whole map is swept of entries no longer of use.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// An answer of the metadata service as the proxy keeps it: its end-to-end headers and
/// whole body.
#[derive(Debug, Clone)]
pub struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl From<Answer> for Stored {
    fn from(a: Answer) -> Self {
        Self {
            status: a.parts.status,
            headers: headers::end_to_end(&a.parts.headers),
            body: a.body,
        }
    }
}

/// A request to the service, as the cache makes it: built by the caller (who knows the
/// target and the deadline), run by the cache in a task of its own.
pub type Fetch = BoxFuture<'static, Result<Stored, ProxyError>>;

/// Why the cache asks the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Nothing usable is held: callers wait for this answer.
    Fill,
    /// A held token is due for renewal: callers keep getting it meanwhile.
    Refresh,
    /// Azure `bypass_cache=true`: sent as asked, its answer replaces the entry.
    Bypass,
}

/// How the cache answered a request (the audit log's `cache` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// From the cache.
    Hit,
    /// This request's own request to the service.
    Miss,
    /// Another request's request to the service, already under way.
    Joined,
    /// A `bypass_cache=true` sent to the service.
    Bypass,
    /// A failure of the service remembered from a moment ago.
    Remembered,
    /// Straight to the service: the cache is full of requests in flight.
    Full,
}

impl How {
    pub fn name(self) -> &'static str {
        match self {
            How::Hit => "hit",
            How::Miss => "miss",
            How::Joined => "joined",
            How::Bypass => "bypass",
            How::Remembered => "error",
            How::Full => "full",
        }
    }
}

/// What a lookup found; the waiting, if any, is done outside the lock.
pub enum Step {
    /// The answer, at once.
    Ready(Result<Stored, ProxyError>, How),
    /// The answer of a request to the service under way.
    Wait(Flight, How),
    /// No room to track this request: it goes to the service on its own.
    Pass,
}

/// What one key holds.
#[derive(Default)]
struct Slot {
    entry: Option<Arc<Entry>>,
    /// When a hit next starts a background refresh (tokens).
    refresh_at: Option<Instant>,
    /// A failure remembered until the given time.
    failed: Option<(Outcome, Instant)>,
    flight: Option<Flight>,
    last_bypass: Option<Instant>,
}

/// An answer held, and until when.
struct Entry {
    stored: Stored,
    life: Life,
}

enum Life {
    Token {
        /// When the request for it was sent: its age counts from there.
        fetched_at: Instant,
        expires_at: Instant,
        serve_until: Instant,
        relative: Vec<expiry::Relative>,
    },
    Document {
        until: Instant,
    },
}

impl Entry {
    /// Until when it may be served.
    fn until(&self) -> Instant {
        match &self.life {
            Life::Token { serve_until, .. } => *serve_until,
            Life::Document { until } => *until,
        }
    }

    /// The answer as served at `now`: a token's relative lifetimes count from now.
    fn serve(&self, now: Instant) -> Stored {
        let body = match &self.life {
            Life::Token {
                fetched_at,
                expires_at,
                relative,
                ..
            } => {
                let left = expires_at.saturating_duration_since(now).as_secs();
                let age = now.saturating_duration_since(*fetched_at);
                let age = age.as_secs() + u64::from(age.subsec_nanos() > 0);
                expiry::rewrite(&self.stored.body, relative, left, age)
            }
            Life::Document { .. } => self.stored.body.clone(),
        };
        Stored {
            status: self.stored.status,
            headers: self.stored.headers.clone(),
            body,
        }
    }
}

struct Map {
    slots: HashMap<String, Slot>,
    next_sweep: Instant,
}

/// The cache. Cheap to share: everything lives behind one `Arc`.
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    settings: CacheSettings,
    map: Mutex<Map>,
    /// Calendar time, which absolute expiries (Azure's `expires_on`) count from.
    calendar: Calendar,
}

/// Seconds since the Unix epoch: the system's, or in tests a calendar that moves with
/// tokio's paused clock, so that absolute and relative expiries agree.
type Calendar = Box<dyn Fn() -> u64 + Send + Sync>;

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Map> {
        // Nothing panics while holding it; should something, the map is still whole.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Cache {
    pub fn new(settings: CacheSettings) -> Self {
        Self::with_calendar(settings, Box::new(crate::clock::unix_now))
    }

    fn with_calendar(settings: CacheSettings, calendar: Calendar) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                map: Mutex::new(Map {
                    slots: HashMap::new(),
                    next_sweep: Instant::now() + SWEEP_EVERY,
                }),
                calendar,
            }),
        }
    }

    /// What it holds now, by kind: `tokens`, `documents`, `failures` (remembered for a
    /// moment) and `in_flight` (requests to the service under way).
    pub fn census(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let map = self.inner.lock();
        let now = Instant::now();
        let mut n = std::collections::BTreeMap::from([
            ("tokens", 0),
            ("documents", 0),
            ("failures", 0),
            ("in_flight", 0),
        ]);
        let mut count = |kind| *n.get_mut(kind).expect("every kind is listed") += 1;
        for slot in map.slots.values() {
            match slot.entry.as_deref() {
                Some(e) if e.until() > now => match e.life {
                    Life::Token { .. } => count("tokens"),
                    Life::Document { .. } => count("documents"),
                },
                _ => {}
            }
            if slot.failed.as_ref().is_some_and(|(_, until)| *until > now) {
                count("failures");
            }
            if slot.flight.is_some() {
                count("in_flight");
            }
        }
        n
    }

    /// The cache's view of a request to the upstream (see [`classify`]).
    pub fn classify(
        &self,
        method: &http::Method,
        path: &crate::request::canonical::CanonicalPath,
        query: Option<&str>,
    ) -> Option<Keyed> {
        let s = &self.inner.settings;
        classify(method, path, query, s.tokens, !s.metadata_ttl.is_zero())
    }

    /// The answer for `keyed`, from the cache or from the service; `fetch` builds the
    /// request to the service when one is needed (at most once, under the cache's lock:
    /// it must only build the future). A caller waiting on a request under way gets the
    /// proxy's timeout answer at `deadline` (a `std` or a tokio instant); the request
    /// itself goes on and fills the cache.
    pub async fn get(
        &self,
        keyed: &Keyed,
        deadline: impl Into<Instant>,
        fetch: impl FnOnce(Purpose) -> Fetch,
    ) -> (Result<Stored, ProxyError>, How) {
        let deadline = deadline.into();
        let mut fetch = Some(fetch);
        match self.step(keyed, |p| (fetch.take().expect("fetch is built once"))(p)) {
            Step::Ready(answer, how) => (answer, how),
            Step::Wait(flight, how) => (flight.wait(deadline).await, how),
            Step::Pass => match fetch.take() {
                Some(f) => (f(Purpose::Fill).await, How::Full),
                None => unreachable!("a pass never fetched"),
            },
        }
    }

    /// Looks `keyed` up and starts whatever request to the service that calls for.
    pub fn step(&self, keyed: &Keyed, mut fetch: impl FnMut(Purpose) -> Fetch) -> Step {
        let now = Instant::now();
        let inner = &self.inner;
        let mut map = inner.lock();
        if now >= map.next_sweep {
            map.sweep(now);
        }
        if !map.slots.contains_key(&keyed.key) {
            if !map.make_room(now, inner.settings.max_entries) {
                return Step::Pass;
            }
            map.slots.insert(keyed.key.clone(), Slot::default());
        }
        let slot = map.slots.get_mut(&keyed.key).expect("inserted above");
        let bypass_allowed = keyed.bypass
            && slot.flight.is_none()
            && slot.last_bypass.is_none_or(|t| now >= t + BYPASS_EVERY);
        if bypass_allowed {
            slot.last_bypass = Some(now);
            let f = flight::start(inner, keyed, Purpose::Bypass, fetch(Purpose::Bypass));
            slot.flight = Some(f.clone());
            return Step::Wait(f, How::Bypass);
        }
        if let Some(entry) = &slot.entry {
            let t = timing::Timing {
                serve_until: entry.until(),
                // Documents are never refreshed: they expire.
                refresh_at: slot.refresh_at.unwrap_or(entry.until()),
            };
            match timing::decide(&t, now) {
                Decision::Expired => slot.entry = None,
                decision => {
                    let entry = entry.clone();
                    if decision == Decision::ServeAndRefresh && slot.flight.is_none() {
                        let f = fetch(Purpose::Refresh);
                        slot.flight = Some(flight::start(inner, keyed, Purpose::Refresh, f));
                    }
                    drop(map);
                    return Step::Ready(Ok(entry.serve(now)), How::Hit);
                }
            }
        }
        if let Some(f) = &slot.flight {
            return Step::Wait(f.clone(), How::Joined);
        }
        if let Some((outcome, until)) = &slot.failed {
            if now < *until {
                return Step::Ready(flight::answer(outcome), How::Remembered);
            }
            slot.failed = None;
        }
        let f = flight::start(inner, keyed, Purpose::Fill, fetch(Purpose::Fill));
        slot.flight = Some(f.clone());
        Step::Wait(f, How::Miss)
    }

    /// Keys held (for tests and the bound on memory).
    pub fn len(&self) -> usize {
        self.inner.lock().slots.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Map {
    /// Removes every slot of no further use: nothing servable, no failure remembered,
    /// no request in flight, no recent bypass.
    fn sweep(&mut self, now: Instant) {
        self.slots
            .retain(|_, s| useful_until(s, now).is_none_or(|u| u > now));
        self.next_sweep = now + SWEEP_EVERY;
    }

    /// Makes room for one more key. Eviction rule: first whatever is of no further use,
    /// then the slot that stops being useful soonest; slots with a request in flight
    /// are never evicted (their callers are waiting), so a map full of those refuses.
    fn make_room(&mut self, now: Instant, max: usize) -> bool {
        if self.slots.len() < max {
            return true;
        }
        self.sweep(now);
        if self.slots.len() < max {
            return true;
        }
        let victim = self
            .slots
            .iter()
            .filter_map(|(k, s)| useful_until(s, now).map(|u| (u, k)))
            .min()
            .map(|(_, k)| k.clone());
        match victim {
            Some(k) => {
                self.slots.remove(&k);
                true
            }
            None => false,
        }
    }
}

/// Until when a slot is of use; `None` while a request is in flight (it must stay).
fn useful_until(s: &Slot, now: Instant) -> Option<Instant> {
    if s.flight.is_some() {
        return None;
    }
    let entry = s.entry.as_ref().map(|e| e.until());
    let failed = s.failed.as_ref().map(|(_, u)| *u);
    let bypass = s.last_bypass.map(|t| t + BYPASS_EVERY);
    Some(
        [entry, failed, bypass]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now),
    )
}

#[cfg(test)]
mod tests;
