//! The audit trail under load: a routine request (allowed and answered without the
//! real service: a cache hit, the emulator, a held credential) gets a line on its first
//! occurrence per caller, method, path, decision and status, and its repeats are
//! counted and written as one line per interval; any other (a denial, a refusal, an
//! error, a request that reached the real service) gets its own line the first
//! [`IN_FULL_NOT_ROUTINE`] times, then is counted the same way. Each is written again
//! in full once it has paused for an interval. So a chatty container costs the journal
//! a few lines per interval, whatever it asks, and cannot crowd out another
//! container's denial.
//!
//! The trail also remembers each caller's latest decision, for `status`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Method, StatusCode};
use tracing::info;

use super::admit::Decision;
use super::audit::{names, Audit, Timing};
use super::cache;
use super::identify::{Caller, Origin};
use super::ClientAddr;

/// Distinct routine requests one caller may have written in full per interval; past
/// that its routine requests are counted under one entry (a container walking many
/// paths is summarised too).
pub const DISTINCT_PER_CALLER: usize = 64;
/// Callers whose latest decision is remembered (the oldest are forgotten first).
const CALLERS_REMEMBERED: usize = 4096;
/// The lines in full a request that is not routine (a denial, a refusal, an error, a
/// request to the real service) gets while it keeps repeating; past them it is counted
/// like a routine one, so a container hammering a denied path cannot flood the
/// journal either.
pub const IN_FULL_NOT_ROUTINE: u32 = 10;
/// What a caller's routine requests past [`DISTINCT_PER_CALLER`] are counted under.
const OTHER_PATHS: &str = "(other paths)";

/// Who called: what the kernel and the proxy know of the connection.
type CallerKey = (Origin, ClientAddr);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    caller: CallerKey,
    method: Method,
    path: String,
    decision: Decision,
    status: u16,
}

/// One routine request seen this interval, and how often it came again.
struct Seen {
    container: String,
    container_id: String,
    cache: Option<cache::How>,
    /// Lines written in full for it since it was first seen.
    written: u32,
    repeats: u64,
}

/// A caller's latest decision, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Last {
    pub client: String,
    pub origin: String,
    /// Empty for the host and unknown callers.
    pub container_id: String,
    pub method: String,
    pub path: String,
    pub decision: std::borrow::Cow<'static, str>,
    pub status: u16,
    /// Seconds since the epoch.
    pub at: u64,
}

#[derive(Default)]
struct Window {
    seen: HashMap<Key, Seen>,
    /// Entries each caller has in `seen`.
    per_caller: HashMap<CallerKey, usize>,
    last: HashMap<CallerKey, Last>,
}

/// The proxy's audit trail: writes or counts each request's event.
pub struct Trail {
    /// `None`: every request written in full.
    every: Option<Duration>,
    window: Mutex<Window>,
}

impl Trail {
    /// A trail summarising routine requests every `every` (zero: never, every request
    /// written in full). With a summary interval, a task writes the summaries while the
    /// trail lives (inside a tokio runtime); what is left is written when it is dropped.
    pub fn new(every: Duration) -> Arc<Self> {
        let trail = Arc::new(Self {
            every: (!every.is_zero()).then_some(every),
            window: Mutex::new(Window::default()),
        });
        if let (Some(every), Ok(rt)) = (trail.every, tokio::runtime::Handle::try_current()) {
            rt.spawn(summarise_every(Arc::downgrade(&trail), every));
        }
        trail
    }

    /// Writes the request's event, or counts it as a repeat of a routine one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &self,
        mut audit: Audit,
        caller: &Caller,
        client: ClientAddr,
        origin: Origin,
        method: &Method,
        status: StatusCode,
        t: Timing,
    ) {
        let who = (origin, client);
        let status_code = status.as_u16();
        let mut w = self.window.lock().expect("audit trail lock");
        let path = audit.path.as_deref().unwrap_or("");
        w.remember(who, caller, method, path, audit.decision, status_code);
        if self.every.is_some() {
            // A routine request is written once; any other the first few times.
            let in_full = if audit.is_routine(status) {
                1
            } else {
                IN_FULL_NOT_ROUTINE
            };
            // The path moves into the key: a repeat allocates nothing.
            let key = Key {
                caller: who,
                method: method.clone(),
                path: audit.path.take().unwrap_or_default(),
                decision: audit.decision,
                status: status_code,
            };
            if let Some(seen) = w.seen.get_mut(&key) {
                if seen.written >= in_full {
                    seen.repeats += 1;
                    return;
                }
                seen.written += 1;
                audit.path = Some(key.path);
                drop(w);
                audit.write(caller, client, origin, method, status, t);
                return;
            }
            if w.per_caller.get(&who).copied().unwrap_or(0) >= DISTINCT_PER_CALLER {
                let other = Key {
                    path: OTHER_PATHS.to_owned(),
                    ..key
                };
                let seen = w
                    .seen
                    .entry(other)
                    .or_insert_with(|| Seen::of(caller, None));
                seen.repeats += 1;
                return;
            }
            *w.per_caller.entry(who).or_insert(0) += 1;
            audit.path = Some(key.path.clone());
            w.seen.insert(key, Seen::of(caller, audit.cache));
        }
        drop(w);
        audit.write(caller, client, origin, method, status, t);
    }

    /// The latest decision of every caller remembered.
    pub fn last_decisions(&self) -> Vec<Last> {
        let w = self.window.lock().expect("audit trail lock");
        w.last.values().cloned().collect()
    }

    /// Writes one line for each request counted since the last summary, with how
    /// often; forgets those that did not come again.
    pub fn summarise(&self, interval: Duration) {
        let repeated: Vec<(Key, String, String, Option<cache::How>, u64)> = {
            let mut w = self.window.lock().expect("audit trail lock");
            let Window {
                seen, per_caller, ..
            } = &mut *w;
            let mut out = Vec::new();
            seen.retain(|key, s| {
                if s.repeats == 0 {
                    if let Some(n) = per_caller.get_mut(&key.caller) {
                        *n = n.saturating_sub(1);
                    }
                    return false;
                }
                out.push((
                    key.clone(),
                    s.container.clone(),
                    s.container_id.clone(),
                    s.cache,
                    s.repeats,
                ));
                s.repeats = 0;
                true
            });
            per_caller.retain(|_, n| *n > 0);
            out
        };
        for (key, container, container_id, cache, count) in repeated {
            let (origin, client) = key.caller;
            let cache = cache.map_or("-", cache::How::name);
            info!(parent: None, %client, container_id = %container_id, container = %container, origin = ?origin, method = %key.method, path = %key.path, decision = %key.decision.name(), status = key.status, cache, count, interval_s = interval.as_secs_f64(), "repeated");
        }
    }
}

impl Drop for Trail {
    /// Nothing counted is lost when the proxy stops.
    fn drop(&mut self) {
        if let Some(every) = self.every {
            self.summarise(every);
        }
    }
}

impl Seen {
    fn of(caller: &Caller, cache: Option<cache::How>) -> Self {
        let (container, container_id) = names(caller);
        Self {
            container: container.to_owned(),
            container_id: container_id.to_owned(),
            cache,
            written: 1,
            repeats: 0,
        }
    }
}

impl Window {
    /// Notes the caller's latest decision; allocates only when the caller is new or
    /// asked for another path.
    fn remember(
        &mut self,
        who: CallerKey,
        caller: &Caller,
        method: &Method,
        path: &str,
        decision: Decision,
        status: u16,
    ) {
        let at = crate::clock::unix_now();
        if let Some(last) = self.last.get_mut(&who) {
            if last.path != path {
                path.clone_into(&mut last.path);
            }
            if last.method != method.as_str() {
                method.as_str().clone_into(&mut last.method);
            }
            last.decision = decision.name().into();
            last.status = status;
            last.at = at;
            return;
        }
        if self.last.len() >= CALLERS_REMEMBERED {
            if let Some(oldest) = self.last.iter().min_by_key(|(_, l)| l.at).map(|(k, _)| *k) {
                self.last.remove(&oldest);
            }
        }
        let (origin, client) = who;
        let (_, container_id) = names(caller);
        self.last.insert(
            who,
            Last {
                client: client.to_string(),
                origin: format!("{origin:?}"),
                container_id: container_id.trim_start_matches('-').to_owned(),
                method: method.to_string(),
                path: path.to_owned(),
                decision: decision.name().into(),
                status,
                at,
            },
        );
    }
}

async fn summarise_every(trail: Weak<Trail>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(trail) = trail.upgrade() else { return };
        trail.summarise(every);
    }
}

#[cfg(test)]
#[path = "trail_tests.rs"]
mod tests;
