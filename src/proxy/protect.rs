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
pub use crate::config::quotas::{Class, ClassLimits, Limits, MAX_CONCURRENCY};
use crate::policy::RateLimit;

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
            crate::metrics::get()
                .pacing_waits
                .get_or_create(&crate::metrics::ClassLabels { class: class.key() })
                .inc();
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
