//! Per-key request rate limits as token buckets. Pure: the caller passes the current
//! time in, so tests drive the clock.
//!
//! A [`RateLimit`] is `requests` per `period` with a `burst`: a bucket holds at most
//! `burst` tokens, a request takes one, and tokens come back at `requests / period`.
//! Arithmetic is exact integers: a token is split into 3.6 × 10¹² units (the
//! nanoseconds in an hour), so every rate refills a whole number of units per
//! nanosecond and no rounding creeps in; only a wait is rounded, up, to whole
//! nanoseconds.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The highest rate a limit may name, in requests per second: anything above is not a
/// limit, and would only overflow arithmetic.
pub const MAX_PER_SECOND: u64 = 1_000_000;
/// The largest burst a limit may name.
pub const MAX_BURST: u64 = 1_000_000;

/// A token, in the units buckets count in: nanoseconds per hour, so that a rate per
/// second, minute or hour refills a whole number of units per nanosecond.
const UNITS_PER_TOKEN: u128 = 3_600_000_000_000;

/// The period a rate is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    Second,
    Minute,
    Hour,
}

impl Per {
    /// As written in a limit: `s`, `min`, `h`.
    pub fn unit(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "min",
            Per::Hour => "h",
        }
    }

    /// Length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
        }
    }

    fn from_unit(unit: &str) -> Option<Self> {
        match unit {
            "s" => Some(Per::Second),
            "min" => Some(Per::Minute),
            "h" => Some(Per::Hour),
            _ => None,
        }
    }
}

/// `requests` per `per`, at most `burst` at once. Only valid limits exist: the rate and
/// the burst are at least 1, the rate at most [`MAX_PER_SECOND`] per second and the
/// burst at most [`MAX_BURST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    requests: u32,
    per: Per,
    burst: u32,
}

impl RateLimit {
    /// A limit; `burst` `None` means the rate per second rounded up (at least 1).
    pub fn new(requests: u64, per: Per, burst: Option<u64>) -> Result<Self, String> {
        if requests == 0 {
            return Err(format!(
                "a rate of 0/{} lets no request through; to refuse every request use default = \"deny\"",
                per.unit()
            ));
        }
        // Compared per period, so that no rate is rounded before it is judged.
        if requests > MAX_PER_SECOND * per.seconds() {
            return Err(format!(
                "{requests}/{} is more than {MAX_PER_SECOND} requests per second",
                per.unit()
            ));
        }
        let burst = burst.unwrap_or_else(|| requests.div_ceil(per.seconds()));
        if burst == 0 {
            return Err(
                "a burst of 0 lets no request through; the burst must be at least 1".into(),
            );
        }
        if burst > MAX_BURST {
            return Err(format!("a burst of {burst} is more than {MAX_BURST}"));
        }
        Ok(Self {
            requests: u32::try_from(requests).expect("bounded above"),
            per,
            burst: u32::try_from(burst).expect("bounded above"),
        })
    }

    /// Requests per [`per`](Self::per).
    pub fn requests(self) -> u32 {
        self.requests
    }

    /// The period the rate is counted over.
    pub fn per(self) -> Per {
        self.per
    }

    /// How many requests may pass at once, after a quiet spell.
    pub fn burst(self) -> u32 {
        self.burst
    }

    /// Units a bucket gains per nanosecond.
    fn refill_per_ns(self) -> u128 {
        u128::from(self.requests)
            * (UNITS_PER_TOKEN / (u128::from(self.per.seconds()) * 1_000_000_000))
    }

    /// Units in a full bucket.
    fn capacity(self) -> u128 {
        u128::from(self.burst) * UNITS_PER_TOKEN
    }
}

/// The canonical form: `20/s burst 20`, `300/min burst 5`.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} burst {}",
            self.requests,
            self.per.unit(),
            self.burst
        )
    }
}

/// `<n>/<s|min|h>`, optionally followed by `burst <m>`; words are separated by
/// whitespace. Errors quote the text and say what is wrong with it.
impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let fail = |reason: String| format!("{text:?}: {reason}");
        let words: Vec<&str> = text.split_whitespace().collect();
        let (rate, burst) = match words.as_slice() {
            [rate] => (*rate, None),
            [rate, "burst", burst] => (*rate, Some(*burst)),
            [_, "burst"] => return Err(fail("\"burst\" needs a number after it".into())),
            [] => {
                return Err(fail(
                    "expected a rate like \"20/s\", \"300/min\" or \"5/s burst 10\"".into(),
                ))
            }
            _ => {
                return Err(fail(
                    "expected <requests>/<s|min|h>, optionally followed by burst <requests>".into(),
                ))
            }
        };
        let Some((count_text, unit)) = rate.split_once('/') else {
            return Err(fail(format!(
                "{rate:?} is not a rate; write <requests>/<s|min|h>, e.g. \"20/s\""
            )));
        };
        let requests = count("the rate", count_text).map_err(&fail)?;
        let per = Per::from_unit(unit)
            .ok_or_else(|| fail(format!("unit {unit:?} is not one of s, min, h")))?;
        let burst = burst
            .map(|b| count("the burst", b))
            .transpose()
            .map_err(&fail)?;
        RateLimit::new(requests, per, burst).map_err(fail)
    }
}

/// A whole, non-negative number of requests (bounds are judged by [`RateLimit::new`]).
fn count(what: &str, text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err(format!("{what} is missing"));
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {text:?} is not a whole number"));
    }
    if digits.len() != text.len() {
        return Err(format!("{what} {text} is negative"));
    }
    text.parse()
        .map_err(|_| format!("{what} {text} is far too large"))
}

/// One key's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Units held at `last`.
    units: u128,
    last: Instant,
    /// The limit of the last check, for the sweep to judge fullness by.
    limit: RateLimit,
}

impl Bucket {
    /// Units held at `now`, never more than the limit's capacity.
    fn level(&self, limit: RateLimit, now: Instant) -> u128 {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.units
            .saturating_add(elapsed.saturating_mul(limit.refill_per_ns()))
            .min(limit.capacity())
    }
}

/// The fewest checks between two sweeps inside [`RateLimiter::check`].
pub const SWEEP_EVERY: usize = 1024;

/// A token bucket per key.
///
/// Memory stays bounded: a key whose bucket has filled up again is indistinguishable
/// from a key never seen, so a sweep drops it. Sweeps run inside [`check`](Self::check),
/// once the number of checks since the last sweep reaches the number of entries that
/// sweep left (and at least [`SWEEP_EVERY`]); so a sweep's cost is paid off by the
/// checks before it (amortised O(1) per check), and the map holds at most about twice
/// the keys that were limited within one burst's refill time, plus [`SWEEP_EVERY`].
/// Callers may also [`sweep`](Self::sweep) on a timer, which keeps memory low when
/// checks stop altogether.
#[derive(Debug, Clone)]
pub struct RateLimiter<K> {
    buckets: HashMap<K, Bucket>,
    checks_since_sweep: usize,
    /// Entries the last sweep left.
    kept_by_last_sweep: usize,
}

impl<K: Hash + Eq + Clone> Default for RateLimiter<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new() -> Self {
        Self {
            buckets: HashMap::new(),
            checks_since_sweep: 0,
            kept_by_last_sweep: 0,
        }
    }

    /// Takes one token from `key`'s bucket (full when the key is new), or says how long
    /// until a token will be there: `Err(wait)`, for a `Retry-After` (round up to whole
    /// seconds). A refused request takes nothing.
    ///
    /// A `limit` different from the key's last one (a policy reloaded) takes effect at
    /// once: the tokens the bucket holds are kept, refilled over the time since the last
    /// check at the new rate and capped at the new burst. A `now` earlier than the key's
    /// last check counts as no time passed.
    pub fn check(&mut self, key: &K, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        self.checks_since_sweep += 1;
        if self.checks_since_sweep >= self.kept_by_last_sweep.max(SWEEP_EVERY) {
            self.sweep(now);
        }
        if !self.buckets.contains_key(key) {
            // A new key: its bucket is full, as if it had been seen long ago.
            let full = Bucket {
                units: limit.capacity(),
                last: now,
                limit,
            };
            self.buckets.insert(key.clone(), full);
        }
        let bucket = self.buckets.get_mut(key).expect("inserted above");
        let units = bucket.level(limit, now);
        bucket.limit = limit;
        bucket.last = bucket.last.max(now);
        if units >= UNITS_PER_TOKEN {
            bucket.units = units - UNITS_PER_TOKEN;
            Ok(())
        } else {
            bucket.units = units;
            let nanos = (UNITS_PER_TOKEN - units).div_ceil(limit.refill_per_ns());
            Err(Duration::from_nanos(
                u64::try_from(nanos).expect("at most an hour"),
            ))
        }
    }

    /// Drops every key whose bucket is full at `now`, and returns the memory of a map
    /// that has shrunk a lot.
    pub fn sweep(&mut self, now: Instant) {
        self.buckets
            .retain(|_, b| b.level(b.limit, now) < b.limit.capacity());
        self.checks_since_sweep = 0;
        self.kept_by_last_sweep = self.buckets.len();
        if self.buckets.capacity() > 4 * self.buckets.len().max(SWEEP_EVERY) {
            self.buckets.shrink_to(2 * self.buckets.len());
        }
    }

    /// Keys remembered: those checked since the last sweep, and those whose bucket was
    /// not yet full at it.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: &str) -> RateLimit {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Requests at `now` for `key` that pass before the first refusal.
    fn passes(
        r: &mut RateLimiter<&'static str>,
        key: &'static str,
        l: RateLimit,
        now: Instant,
    ) -> u32 {
        let mut n = 0;
        while r.check(&key, l, now).is_ok() {
            n += 1;
            assert!(n <= 2_000_000, "never refused");
        }
        n
    }

    #[test]
    fn limits_parse_and_print_canonically() {
        for (text, shown) in [
            ("20/s", "20/s burst 20"),
            ("300/min", "300/min burst 5"),
            ("5/s burst 10", "5/s burst 10"),
            ("  5/s   burst  10 ", "5/s burst 10"),
            ("1/min", "1/min burst 1"),
            ("61/min", "61/min burst 2"),
            ("7200/h", "7200/h burst 2"),
            ("1/h", "1/h burst 1"),
            ("020/s", "20/s burst 20"),
            ("1000000/s", "1000000/s burst 1000000"),
            ("60000000/min burst 1", "60000000/min burst 1"),
        ] {
            let l = limit(text);
            assert_eq!(l.to_string(), shown, "{text}");
            assert_eq!(limit(shown), l, "{shown} reads back");
        }
        let l = limit("300/min burst 7");
        assert_eq!((l.requests(), l.per(), l.burst()), (300, Per::Minute, 7));
    }

    #[test]
    fn bad_limits_say_what_is_wrong() {
        for (text, reason) in [
            ("", "expected a rate like"),
            ("0/s", "a rate of 0/s lets no request through"),
            ("-5/s", "the rate -5 is negative"),
            ("5/s burst -1", "the burst -1 is negative"),
            ("5/s burst 0", "a burst of 0 lets no request through"),
            (
                "5/s burst 1000001",
                "a burst of 1000001 is more than 1000000",
            ),
            (
                "1000001/s",
                "1000001/s is more than 1000000 requests per second",
            ),
            (
                "60000001/min",
                "60000001/min is more than 1000000 requests per second",
            ),
            (
                "99999999999999999999999/s",
                "the rate 99999999999999999999999 is far too large",
            ),
            (
                "5/s burst 99999999999999999999",
                "the burst 99999999999999999999 is far too large",
            ),
            ("20", "\"20\" is not a rate"),
            ("20/sec", "unit \"sec\" is not one of s, min, h"),
            ("20/S", "unit \"S\" is not one of s, min, h"),
            ("/s", "the rate is missing"),
            ("x/s", "the rate \"x\" is not a whole number"),
            ("1.5/s", "the rate \"1.5\" is not a whole number"),
            ("+5/s", "the rate \"+5\" is not a whole number"),
            ("5 / s", "expected <requests>/<s|min|h>"),
            ("5/s burst", "\"burst\" needs a number"),
            ("5/s bust 3", "expected <requests>/<s|min|h>"),
            ("5/s burst 3 4", "expected <requests>/<s|min|h>"),
            ("5/s burst x", "the burst \"x\" is not a whole number"),
        ] {
            let e = text.parse::<RateLimit>().unwrap_err();
            assert!(e.starts_with(&format!("{text:?}: ")), "{text}: {e}");
            assert!(e.contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn exactly_the_burst_passes_at_once_then_one_per_interval() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new();
        let l = limit("20/s");
        assert_eq!(passes(&mut r, "a", l, t0), 20);
        assert_eq!(r.check(&"a", l, t0), Err(ms(50)));
        assert_eq!(r.check(&"a", l, t0 + ms(49)), Err(ms(1)));
        assert_eq!(r.check(&"a", l, t0 + ms(50)), Ok(()));
        assert_eq!(r.check(&"a", l, t0 + ms(50)), Err(ms(50)));
        // A long quiet spell refills the bucket, but never beyond the burst.
        assert_eq!(passes(&mut r, "a", l, t0 + Duration::from_secs(3600)), 20);
    }

    #[test]
    fn a_small_burst_smooths_and_a_large_one_saves_up() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new();
        let l = limit("5/s burst 10");
        assert_eq!(passes(&mut r, "a", l, t0), 10);
        assert_eq!(r.check(&"a", l, t0), Err(ms(200)));
        assert_eq!(passes(&mut r, "a", l, t0 + ms(1000)), 5);
        let l = limit("300/min burst 1");
        assert_eq!(passes(&mut r, "b", l, t0), 1);
        assert_eq!(r.check(&"b", l, t0 + ms(199)), Err(ms(1)));
        assert_eq!(r.check(&"b", l, t0 + ms(200)), Ok(()));
    }

    #[test]
    fn the_wait_is_enough_even_when_the_interval_is_not_whole_nanoseconds() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new();
        for text in [
            "3/s burst 1",
            "7/min burst 1",
            "11/h burst 1",
            "999999/s burst 1",
        ] {
            let l = limit(text);
            let mut now = t0;
            assert_eq!(r.check(&text, l, now), Ok(()));
            for _ in 0..50 {
                let wait = r.check(&text, l, now).unwrap_err();
                assert!(wait > Duration::ZERO, "{text}");
                assert_eq!(
                    r.check(&text, l, now + wait - Duration::from_nanos(1)),
                    Err(Duration::from_nanos(1)),
                    "{text}: not a nanosecond early"
                );
                now += wait;
                assert_eq!(r.check(&text, l, now), Ok(()), "{text}");
            }
            // A wait is rounded up to whole nanoseconds, and a bucket of one token
            // cannot keep the overshoot: each interval is at most 1 ns long.
            let exact = Duration::from_secs(l.per().seconds()) * 50 / l.requests();
            let total = now - t0;
            assert!(
                total >= exact && total <= exact + Duration::from_nanos(50),
                "{text}: {total:?} for {exact:?}"
            );
        }
    }

    #[test]
    fn keys_do_not_share_a_bucket() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new();
        let l = limit("2/s");
        assert_eq!(passes(&mut r, "a", l, t0), 2);
        assert_eq!(passes(&mut r, "b", l, t0), 2);
        assert_eq!(passes(&mut r, "a", l, t0 + ms(500)), 1);
        assert_eq!(r.check(&"c", limit("1/s"), t0), Ok(()));
        assert_eq!(r.check(&"c", limit("1/s"), t0), Err(ms(1000)));
        assert_eq!(passes(&mut r, "b", l, t0 + ms(500)), 1);
    }

    #[test]
    fn a_new_limit_applies_at_the_next_check() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new();
        assert_eq!(passes(&mut r, "a", limit("10/s"), t0), 10);
        // Raised: the empty bucket refills at the new rate, to the new burst.
        let fast = limit("100/s burst 50");
        assert_eq!(r.check(&"a", fast, t0), Err(ms(10)));
        assert_eq!(passes(&mut r, "a", fast, t0 + ms(100)), 10);
        assert_eq!(passes(&mut r, "a", fast, t0 + ms(1000)), 50);
        // Lowered: what the bucket holds is capped at the new burst.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(r.check(&"a", fast, t1), Ok(()));
        let slow = limit("1/min burst 3");
        assert_eq!(passes(&mut r, "a", slow, t1), 3);
        assert_eq!(r.check(&"a", slow, t1), Err(ms(60_000)));
    }

    #[test]
    fn time_going_backwards_counts_as_none() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut r = RateLimiter::new();
        let l = limit("1/s");
        assert_eq!(r.check(&"a", l, t0), Ok(()));
        assert_eq!(r.check(&"a", l, t0 - ms(5000)), Err(ms(1000)));
        assert_eq!(r.check(&"a", l, t0 + ms(1000)), Ok(()));
    }

    #[test]
    fn full_buckets_are_swept_so_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new();
        let l = limit("20/s");
        for k in 0..100_000u32 {
            assert_eq!(r.check(&k, l, t0), Ok(()));
        }
        // Nothing was full yet: every key is still remembered.
        assert_eq!(r.len(), 100_000);
        // One second later every bucket is full again. Checks on one key sweep the
        // rest away after a number of checks bounded by the map's size.
        let t1 = t0 + Duration::from_secs(1);
        let mut checks = 0;
        while r.len() > 1 {
            // One request per refill interval: key 0 always passes, never fills up.
            r.check(&0, l, t1 + ms(50 * checks)).unwrap();
            checks += 1;
            assert!(checks <= 100_000, "no sweep after {checks} checks");
        }
        assert!(r.buckets.capacity() < 10_000, "{}", r.buckets.capacity());
    }

    #[test]
    fn a_sweep_keeps_buckets_that_are_not_full() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new();
        let l = limit("20/s");
        for k in 0..3u32 {
            r.check(&k, l, t0).unwrap();
        }
        r.check(&0, l, t0 + ms(40)).unwrap();
        // Keys 1 and 2 are full again at 50 ms; key 0 (19.8 - 1 tokens at 40 ms) at 100 ms.
        r.sweep(t0 + ms(49));
        assert_eq!(r.len(), 3);
        r.sweep(t0 + ms(50));
        assert_eq!(r.len(), 1);
        // A swept key starts again with a full bucket.
        let t1 = t0 + ms(50);
        for _ in 0..20 {
            r.check(&1, l, t1).unwrap();
        }
        assert_eq!(r.check(&1, l, t1), Err(ms(50)));
        r.sweep(t0 + ms(99));
        assert_eq!(r.len(), 2);
        r.sweep(t0 + ms(100));
        assert_eq!(r.len(), 1);
        r.sweep(t1 + ms(1000));
        assert!(r.is_empty());
    }

    #[test]
    fn a_steady_stream_of_new_keys_stays_bounded() {
        // Each key checked once, one key per millisecond, refill in 1 s: at any time
        // about 1000 keys are not full.
        let t0 = Instant::now();
        let mut r = RateLimiter::new();
        let l = limit("1/s");
        let mut most = 0;
        for k in 0..200_000u64 {
            r.check(&k, l, t0 + ms(k)).unwrap();
            most = most.max(r.len());
        }
        assert!(most <= 2 * (1000 + SWEEP_EVERY), "{most}");
    }
}
