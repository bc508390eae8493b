//! When to try the metadata service again, and after how long. Pure: the caller passes
//! the clock and the jitter in, so tests drive both.
//!
//! The proxy sits in front of one service that every container shares, behind SDKs
//! that give up quickly (botocore: 1 s, one attempt). So a transient failure (a 5xx,
//! Azure's 410 during an update, a 429, a refused connection, an attempt that hangs)
//! is absorbed here while the caller's deadline still allows another attempt; a
//! refusal that means "no" (400, 401, 403, 404, 405) is passed on at once; and a
//! request with side effects (Azure's scheduled-event approval, a POST) is sent once.

use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use tokio::time::Instant;

/// Attempts at most, the first included: enough to ride out a blip, few enough that a
/// broken service costs the shared budget little.
pub const MAX_ATTEMPTS: u32 = 4;
/// The first retry waits up to this long (full jitter: anything from zero).
pub const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// No backoff step is longer than this (a `Retry-After` may be).
pub const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// The least time worth giving an attempt: metadata services answer in milliseconds,
/// so less than this left before the deadline means another try would only turn the
/// caller's prompt answer into a timeout.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The service answered with this status.
    Status(StatusCode),
    /// No connection could be made.
    ConnectFailed,
    /// The attempt's own time ran out.
    TimedOut,
    /// The connection broke mid-answer, or the answer was too large: the request may
    /// have been acted on, and a second try would most likely break the same way.
    Failed,
}

impl Outcome {
    /// Whether trying again may give another result: 410 (Azure IMDS while it is
    /// updating), 429, 500, 502, 503, 504, a refused connection and a hung attempt.
    pub fn transient(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s.as_u16(), 410 | 429 | 500 | 502 | 503 | 504),
            Outcome::ConnectFailed | Outcome::TimedOut => true,
            Outcome::Failed => false,
        }
    }
}

/// Whether a caller's request may be sent more than once: only the safe methods. The
/// metadata services define little else (Azure's scheduled-event approval is a POST,
/// AWS's session PUT is answered by the proxy itself), and what else there is may act.
pub fn repeatable(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again after this wait.
    Retry(Duration),
    /// The last answer is the answer.
    Stop(Why),
}

/// Why no further attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A success, or an answer that means "no".
    Final,
    /// The request may act, or must hang on its own (a long poll): sent once.
    Once,
    /// [`MAX_ATTEMPTS`] were made.
    Attempts,
    /// The wait and one more attempt would not fit before the deadline.
    Deadline,
}

/// After attempt number `made` (1 for the first) ended with `outcome` at `now`: stop,
/// or retry after a wait. The wait is the service's own `Retry-After` when it gave one,
/// else exponential backoff with full jitter (`jitter` in [0, 1) picks the point).
/// A retry is planned only if, after the wait, at least [`MIN_ATTEMPT`] is left.
pub fn plan(
    repeatable: bool,
    made: u32,
    outcome: Outcome,
    retry_after: Option<Duration>,
    now: Instant,
    deadline: Instant,
    jitter: f64,
) -> Next {
    if !outcome.transient() {
        return Next::Stop(Why::Final);
    }
    if !repeatable {
        return Next::Stop(Why::Once);
    }
    if made >= MAX_ATTEMPTS {
        return Next::Stop(Why::Attempts);
    }
    let wait = retry_after.unwrap_or_else(|| backoff(made - 1, jitter));
    let fits = now
        .checked_add(wait)
        .and_then(|t| t.checked_add(MIN_ATTEMPT))
        .is_some_and(|t| t <= deadline);
    if fits {
        Next::Retry(wait)
    } else {
        Next::Stop(Why::Deadline)
    }
}

/// The wait before retry number `retry + 1`: a point `jitter` (in [0, 1)) of the way
/// to its [`backoff_ceiling`]. Full jitter spreads callers that failed together, so
/// their retries do not arrive together.
pub fn backoff(retry: u32, jitter: f64) -> Duration {
    // In whole nanoseconds: exact for the jitter points tests pick.
    let nanos = backoff_ceiling(retry).as_nanos() as f64 * jitter.clamp(0.0, 1.0);
    Duration::from_nanos(nanos as u64)
}

/// The longest wait before retry number `retry + 1`: `BACKOFF_BASE × 2^retry`, capped
/// at [`BACKOFF_CAP`].
pub fn backoff_ceiling(retry: u32) -> Duration {
    BACKOFF_BASE
        .checked_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP)
}

/// How long attempt number `made + 1` may take with `remaining` before the deadline.
/// While another attempt may follow, half of what is left (at least [`MIN_ATTEMPT`]),
/// so a hung connection (a lost SYN waits a second for its resend) leaves time to try
/// on a fresh one; but only if what the half leaves holds the longest backoff and one
/// more attempt. Otherwise this is the last attempt, and it gets all the time left:
/// a slow answer is still better than none.
pub fn attempt_timeout(remaining: Duration, made: u32, repeatable: bool) -> Duration {
    if !repeatable || made + 1 >= MAX_ATTEMPTS {
        return remaining;
    }
    let part = (remaining / 2).max(MIN_ATTEMPT);
    let after = backoff_ceiling(made) + MIN_ATTEMPT;
    if part + after <= remaining {
        part
    } else {
        remaining
    }
}

/// A `Retry-After` value as a wait from `now`: whole seconds, or an HTTP date (a date
/// already past is no wait). Anything else is `None` (the backoff applies). Seconds too
/// many to count are a wait no deadline fits.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            v.parse::<u64>()
                .map(Duration::from_secs)
                .unwrap_or(Duration::MAX),
        );
    }
    let at = http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// An HTTP date in any of the three forms recipients must accept (RFC 9110 §5.6.7):
/// `Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT` and
/// `Sun Nov  6 08:49:37 1994`. The weekday is checked for spelling only.
pub fn http_date(s: &str) -> Option<SystemTime> {
    let (day, month, year, time) = if let Some((weekday, rest)) = s.split_once(", ") {
        match rest.split(' ').collect::<Vec<_>>().as_slice() {
            [d, m, y, t, "GMT"] if DAYS.contains(&weekday) && d.len() == 2 && y.len() == 4 => {
                (number(d)?, *m, number(y)?, *t)
            }
            [dmy, t, "GMT"] if LONG_DAYS.contains(&weekday) => {
                let [d, m, y] = dmy.split('-').collect::<Vec<_>>()[..] else {
                    return None;
                };
                if d.len() != 2 || y.len() != 2 {
                    return None;
                }
                // Two-digit years: 70-99 are the 1900s, the rest this century.
                let yy = number(y)?;
                (
                    number(d)?,
                    m,
                    if yy >= 70 { 1900 + yy } else { 2000 + yy },
                    *t,
                )
            }
            _ => return None,
        }
    } else {
        match s.split_whitespace().collect::<Vec<_>>().as_slice() {
            [weekday, m, d, t, y] if DAYS.contains(weekday) && y.len() == 4 => {
                (number(d)?, *m, number(y)?, *t)
            }
            _ => return None,
        }
    };
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let [h, min, sec] = time.split(':').collect::<Vec<_>>()[..] else {
        return None;
    };
    if [h, min, sec].iter().any(|p| p.len() != 2) {
        return None;
    }
    let (h, min, sec) = (number(h)?, number(min)?, number(sec)?);
    if year < 1970 || day == 0 || day > days_in(month, year) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_since_epoch(year, month, day);
    let secs = days * 86_400 + h * 3600 + min * 60 + sec.min(59);
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn leap(year: u64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in(month: u64, year: u64) -> u64 {
    match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (year ≥ 1970).
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    let years: u64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum();
    let months: u64 = (1..month).map(|m| days_in(m, year)).sum();
    years + months + day - 1
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
