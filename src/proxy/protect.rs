//! Protection of the real metadata service: a request rate and a cap on requests in
//! flight per provider class, shared by every caller, applied to every request the
//! proxy sends upstream (its own AWS session PUT and every retry included).
//!
//! The quotas are the instance's, not a container's: Azure IMDS answers 429 beyond 5
//! requests a second per VM (20 a second and 5 at once for managed identity), and
//! AWS's link-local services share one packet budget per network interface. The
//! proxy gathers every container's traffic onto that one quota, so it paces requests
//! to stay inside it: a request beyond the rate waits for its turn (first come, first
//! served) while its deadline allows, and otherwise gets a prompt 429 in the
//! provider's shape rather than a late one from the service, or none before the SDK
//! gives up.
//!
//! The rate is a token bucket kept as a schedule of send times (GCRA), so waiting
//! requests hold reservations in arrival order and none can overtake another; see
//! [`Pacer`]. It reuses the policy module's [`RateLimit`] (its syntax, validation and
//! bounds); the policy module's own bucket answers "now or refuse", which is right for
//! a container's budget but cannot queue.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
// Tokio's clock: the system's unless a test pauses it, so pacing is tested without
// waiting on the wall clock.
use tokio::time::Instant;
use tracing::debug;

use super::retry::MIN_ATTEMPT;
use crate::policy::canonical::CanonicalPath;
use crate::policy::ratelimit::Per;
use crate::policy::{Provider, RateLimit};

/// Which of the service's quotas a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Azure IMDS under `/metadata/`, managed identity excepted.
    Azure,
    /// Azure managed identity, `/metadata/identity/...`: a quota of its own.
    AzureIdentity,
    /// GCE, and paths of no provider's tree (`/`, which Google's libraries probe).
    Gce,
    /// AWS, the proxy's own session PUT included.
    Aws,
}

impl Class {
    /// Every class, in the order of the configuration keys.
    pub const ALL: [Class; 4] = [Class::Azure, Class::AzureIdentity, Class::Gce, Class::Aws];

    /// The class of a request path.
    pub fn of(path: &CanonicalPath) -> Self {
        match Provider::of(path) {
            Provider::Azure if path.lower().get(1).is_some_and(|s| s == "identity") => {
                Class::AzureIdentity
            }
            Provider::Azure => Class::Azure,
            Provider::Aws => Class::Aws,
            Provider::Gce | Provider::Other => Class::Gce,
        }
    }

    /// Its name in the configuration (`upstream_limits.<key>`) and in logs.
    pub fn key(self) -> &'static str {
        match self {
            Class::Azure => "azure",
            Class::AzureIdentity => "azure_identity",
            Class::Gce => "gce",
            Class::Aws => "aws",
        }
    }

    /// The class a configuration key names.
    pub fn from_key(key: &str) -> Option<Self> {
        Class::ALL.into_iter().find(|c| c.key() == key)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// The most requests in flight a class may be allowed: more is no cap.
pub const MAX_CONCURRENCY: u32 = 1024;

/// One class's rate and cap on requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassLimits {
    pub rate: RateLimit,
    /// Requests in flight at most, 1..=[`MAX_CONCURRENCY`]. GCE `wait_for_change` long
    /// polls do not count: they hang by design, and would starve every other request.
    pub concurrency: u32,
}

/// The limits of every class (`upstream_limits` and `upstream_concurrency`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    classes: [ClassLimits; 4],
}

impl Limits {
    pub fn get(&self, class: Class) -> ClassLimits {
        self.classes[class.index()]
    }

    pub fn set_rate(&mut self, class: Class, rate: RateLimit) {
        self.classes[class.index()].rate = rate;
    }

    pub fn set_concurrency(&mut self, class: Class, concurrency: u32) {
        self.classes[class.index()].concurrency = concurrency.clamp(1, MAX_CONCURRENCY);
    }
}

fn limit(requests: u64, burst: u64) -> RateLimit {
    RateLimit::new(requests, Per::Second, Some(burst)).expect("valid built-in limit")
}

/// The defaults, and why.
///
/// - **Azure, `5/s burst 1`; identity `20/s burst 1`, 5 at once**: Azure's published
///   per-VM limits. A token bucket lets `burst` requests through at once and then one
///   per interval, so a second that starts with a full bucket carries `burst - 1` more
///   than the rate; a burst of 1 keeps every second, from whatever instant it is
///   counted, at Azure's number.
/// - **GCE, `50/s burst 20`**: Google publishes no number. The libraries cache tokens
///   and read a handful of values at start, so a healthy host asks far less; 50 a
///   second stops a runaway loop in one container from hammering the server for all.
/// - **AWS, `50/s burst 20`**: link-local traffic (metadata, the DNS resolver at
///   169.254.169.253, the time service) shares about 1024 packets a second per network
///   interface. A metadata request on a kept-alive connection is about 4 packets, on a
///   new one about 10: 50 a second uses at most half the budget, and leaves DNS, which
///   every container needs, the rest.
/// - **16 in flight** for all but Azure identity: never reached while the service
///   answers in milliseconds (50 a second × 5 ms is a quarter of a request in flight);
///   it bounds what a stalled service holds, instead of piling every caller onto it.
impl Default for Limits {
    fn default() -> Self {
        Self {
            classes: [
                ClassLimits {
                    rate: limit(5, 1),
                    concurrency: 16,
                },
                ClassLimits {
                    rate: limit(20, 1),
                    concurrency: 5,
                },
                ClassLimits {
                    rate: limit(50, 20),
                    concurrency: 16,
                },
                ClassLimits {
                    rate: limit(50, 20),
                    concurrency: 16,
                },
            ],
        }
    }
}

/// The time between two requests at `limit`'s rate, rounded up to whole nanoseconds
/// (never faster than the rate).
fn interval(limit: RateLimit) -> Duration {
    let period_ns = u128::from(limit.per().seconds()) * 1_000_000_000;
    let ns = period_ns.div_ceil(u128::from(limit.requests()));
    Duration::from_nanos(u64::try_from(ns).expect("at most an hour"))
}

/// A token bucket kept as a schedule: the theoretical time of the next send (GCRA).
/// Each request reserves the earliest send time the rate allows, in the order
/// requests ask, so a request that waits keeps its place. The bucket holds `burst`
/// after a quiet spell; sends are then at least one interval apart. In any span of
/// time `w`, at most `burst + w × rate` requests are sent.
///
/// A reservation that is not used (its caller went away) is simply lost: the rate is
/// never exceeded, only under-used.
#[derive(Debug, Default, Clone)]
pub struct Pacer {
    /// When the bucket will be empty with nothing more taken; `None` before the first.
    next: Option<Instant>,
}

impl Pacer {
    /// Reserves the earliest send time at or after `now` under `limit`, if it is no
    /// later than `latest`. Otherwise reserves nothing and says how long until a send
    /// would be allowed (for a `Retry-After`).
    pub fn reserve(
        &mut self,
        limit: RateLimit,
        now: Instant,
        latest: Instant,
    ) -> Result<Instant, Duration> {
        let step = interval(limit);
        let tolerance = step * (limit.burst() - 1);
        let next = self.next.unwrap_or(now).max(now);
        let at = next.checked_sub(tolerance).unwrap_or(now).max(now);
        if at > latest {
            return Err(at - now);
        }
        self.next = Some(next + step);
        Ok(at)
    }
}

/// The guards of every class, shared by all requests to the upstream.
pub struct Protection {
    guards: [Guard; 4],
}

struct Guard {
    limits: ClassLimits,
    /// Held only to reserve a send time, never across an await.
    pacer: Mutex<Pacer>,
    /// Fair: waiters get permits in the order they asked.
    slots: Semaphore,
}

/// Leave to send one request; frees its place in flight when dropped.
pub struct Admitted<'a> {
    _slot: Option<SemaphorePermit<'a>>,
}

/// What a caller that waited for a place in flight until its deadline is told to wait.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Protection {
    pub fn new(limits: &Limits) -> Self {
        Self {
            guards: Class::ALL.map(|c| {
                let limits = limits.get(c);
                Guard {
                    limits,
                    pacer: Mutex::new(Pacer::default()),
                    slots: Semaphore::new(limits.concurrency as usize),
                }
            }),
        }
    }

    /// Waits for a place in flight (unless `uncapped`: a long poll) and then for the
    /// class's next send time, and returns once the request may go. A request that
    /// could not be sent at least [`MIN_ATTEMPT`] before `deadline` is refused at once:
    /// `Err(wait)` says when to come back.
    pub async fn admit(
        &self,
        class: Class,
        deadline: Instant,
        uncapped: bool,
    ) -> Result<Admitted<'_>, Duration> {
        let guard = &self.guards[class.index()];
        let asked = Instant::now();
        let latest = deadline.checked_sub(MIN_ATTEMPT).unwrap_or(asked);
        let slot = if uncapped {
            None
        } else {
            let acquire = guard.slots.acquire();
            match tokio::time::timeout_at(latest, acquire).await {
                Ok(Ok(permit)) => Some(permit),
                // Waited until the last moment, or (never) the semaphore was closed.
                _ => return Err(BUSY_RETRY_AFTER),
            }
        };
        let now = Instant::now();
        let at = guard
            .pacer
            .lock()
            .expect("pacer lock")
            .reserve(guard.limits.rate, now, latest)?;
        if at > now {
            tokio::time::sleep_until(at).await;
        }
        let waited = at.max(now) - asked;
        if !waited.is_zero() {
            debug!(
                class = class.key(),
                waited_ms = waited.as_millis() as u64,
                "waited for the metadata service's request budget"
            );
        }
        Ok(Admitted { _slot: slot })
    }
}

#[cfg(test)]
#[path = "protect_tests.rs"]
mod tests;
