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
use tracing::{info, warn};

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
/// What a caller's requests past [`DISTINCT_PER_CALLER`] are counted under.
const OTHER_PATHS: &str = "(other paths)";
/// Entries kept at most, all callers together; past it a new request is written in
/// full and not kept, so neither memory nor what is hidden can grow without bound.
const SEEN_MAX: usize = 16_384;

/// Who called: what the kernel and the proxy know of the connection.
type CallerKey = (Origin, ClientAddr);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    caller: CallerKey,
    /// Routine or not: the two never share an entry (a cache miss is not a repeat of
    /// the hits on its path), and each has its own share per caller, so routine
    /// requests can never push a denial into `(other paths)`.
    routine: bool,
    method: Method,
    path: String,
    decision: Decision,
    status: u16,
}

/// One request seen this interval, and how often it came again.
#[derive(Clone)]
struct Seen {
    container: String,
    container_id: String,
    cache: Option<cache::How>,
    /// The first one's error, for the summary of one that failed.
    error: Option<String>,
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
    /// Entries each caller has in `seen`, routine and not apart.
    per_caller: HashMap<(CallerKey, bool), usize>,
    last: HashMap<CallerKey, Last>,
}

/// The proxy's audit trail: writes or counts each request's event.
pub struct Trail {
    /// `None`: every request written in full.
    every: Option<Duration>,
    window: Mutex<Window>,
}

impl Trail {
    /// A trail summarising repeated requests every `every` (zero: never, every request
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

    /// Writes the request's event, or counts it as a repeat (see [`Window::place`]).
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
            // The path moves into the key: a repeat allocates nothing.
            let key = Key {
                caller: who,
                routine: audit.is_routine(status),
                method: method.clone(),
                path: audit.path.take().unwrap_or_default(),
                decision: audit.decision,
                status: status_code,
            };
            match w.place(key, caller, &audit) {
                Some(path) => audit.path = Some(path),
                None => return,
            }
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
        let repeated: Vec<(Key, Seen)> = {
            let mut w = self.window.lock().expect("audit trail lock");
            let Window {
                seen, per_caller, ..
            } = &mut *w;
            let mut out = Vec::new();
            seen.retain(|key, s| {
                if s.repeats == 0 {
                    // `(other paths)` takes no place in the share.
                    if key.path != OTHER_PATHS {
                        if let Some(n) = per_caller.get_mut(&(key.caller, key.routine)) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    return false;
                }
                out.push((key.clone(), s.clone()));
                s.repeats = 0;
                true
            });
            per_caller.retain(|_, n| *n > 0);
            out
        };
        let interval_s = interval.as_secs_f64();
        for (key, s) in repeated {
            let (origin, client) = key.caller;
            let (container, container_id) = (&s.container, &s.container_id);
            let (method, path, status) = (&key.method, &key.path, key.status);
            let (decision, cache, count) = (
                key.decision.name(),
                s.cache.map_or("-", cache::How::name),
                s.repeats,
            );
            // At the level of the request lines it stands for: a warning where they had
            // an error (a denial, a refusal, a failure).
            match &s.error {
                None => {
                    info!(parent: None, %client, %container_id, %container, ?origin, %method, %path, %decision, status, cache, count, interval_s, "repeated")
                }
                Some(error) => {
                    warn!(parent: None, %client, %container_id, %container, ?origin, %method, %path, %decision, status, cache, count, interval_s, %error, "repeated")
                }
            }
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
    fn of(caller: &Caller, audit: Option<&Audit>) -> Self {
        let (container, container_id) = names(caller);
        Self {
            container: container.to_owned(),
            container_id: container_id.to_owned(),
            cache: audit.and_then(|a| a.cache),
            error: audit.and_then(|a| a.error.clone()),
            written: 1,
            repeats: 0,
        }
    }
}

impl Window {
    /// Whether a request gets its line in full (its path handed back) or is counted
    /// (`None`): a routine one in full once, any other its first
    /// [`IN_FULL_NOT_ROUTINE`] times; a caller's new requests past its share are
    /// counted under `(other paths)`.
    fn place(&mut self, mut key: Key, caller: &Caller, audit: &Audit) -> Option<String> {
        let in_full = if key.routine { 1 } else { IN_FULL_NOT_ROUTINE };
        if let Some(seen) = self.seen.get_mut(&key) {
            if seen.written >= in_full {
                seen.repeats += 1;
                return None;
            }
            seen.written += 1;
            return Some(key.path);
        }
        let share = (key.caller, key.routine);
        let full = self.seen.len() >= SEEN_MAX;
        if self.per_caller.get(&share).copied().unwrap_or(0) >= DISTINCT_PER_CALLER {
            let path = std::mem::replace(&mut key.path, OTHER_PATHS.to_owned());
            let other = key;
            if let Some(seen) = self.seen.get_mut(&other) {
                seen.repeats += 1;
                return None;
            }
            if !full {
                let mut seen = Seen::of(caller, None);
                seen.repeats = 1;
                self.seen.insert(other, seen);
                return None;
            }
            return Some(path);
        }
        if full {
            return Some(key.path);
        }
        *self.per_caller.entry(share).or_insert(0) += 1;
        let path = key.path.clone();
        self.seen.insert(key, Seen::of(caller, Some(audit)));
        Some(path)
    }

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
