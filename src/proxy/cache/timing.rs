//! How long a cached token is served, and when it is refreshed. Pure: every decision is
//! a function of when the token was fetched, when it expires, and now.
//!
//! A token is served from the cache only while it has more than its provider's
//! `min_remaining` left: an SDK must never receive a token it would at once consider
//! due for renewal (it would come straight back, or worse, fail). Before that point it
//! is refreshed in the background, at a jittered point between half its lifetime and
//! shortly before the serving window closes, so that a hot token is replaced before
//! any caller has to wait for the service, and tokens fetched together are not all
//! refreshed together.

use std::time::Duration;

use tokio::time::Instant;

use super::key::Kind;

/// Azure: MSAL (under azure-identity, Python and .NET) treats a managed-identity token
/// with less than 5 minutes left as expired and asks again, and Azure.Identity renews 5
/// minutes ahead. Twice that leaves room for the client's own schedule; managed
/// identity tokens live about 24 hours, so this costs nothing.
pub const AZURE_MIN_REMAINING: Duration = Duration::from_secs(10 * 60);
/// GCE: google-auth (Python, and Java since 1.x) refreshes 3 min 45 s before expiry;
/// older Java releases held a token usable until 5 minutes before. The metadata server
/// itself hands out the same token until 5 minutes before it expires, so 5 minutes
/// serves nothing the service would not, and is above every client's threshold (any
/// more would turn the service's last minutes of each token into uncached requests).
pub const GCE_MIN_REMAINING: Duration = Duration::from_secs(5 * 60);
/// AWS: botocore renews 15 minutes before expiry (advisory; mandatory at 10) and the AWS
/// SDK for Java 15 minutes before: credentials with less left would be renewed on every
/// use. 5 minutes above the strictest.
pub const AWS_MIN_REMAINING: Duration = Duration::from_secs(20 * 60);

/// The least time a background refresh has before the serving window closes, for
/// itself and a retry or two.
pub const REFRESH_LEAD: Duration = Duration::from_secs(2 * 60);
/// After a refresh that failed or brought no fresher token, the next is tried half way
/// to the end of the serving window, but never sooner than this.
pub const MIN_RETRY: Duration = Duration::from_secs(5);

/// How much life a token of `kind` must have left to be served from the cache.
pub fn min_remaining(kind: Kind) -> Duration {
    match kind {
        Kind::AzureToken => AZURE_MIN_REMAINING,
        Kind::GceToken | Kind::GceIdToken => GCE_MIN_REMAINING,
        Kind::AwsCredentials => AWS_MIN_REMAINING,
        Kind::Document => Duration::ZERO,
    }
}

/// When a cached token stops being served and when it is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `expires_at - min_remaining`: never served from the cache after this.
    pub serve_until: Instant,
    /// From this point on, a request served from the cache starts a refresh.
    pub refresh_at: Instant,
}

/// The timing of a token fetched at `fetched_at` (when the request for it was sent)
/// that expires at `expires_at`; `jitter` in `0.0..=1.0` picks the refresh point.
/// `None` when it has no serving window at all (it is passed on, never cached).
///
/// The refresh point is where the time left falls below a value chosen between half
/// the lifetime and `min_remaining + REFRESH_LEAD` (clamped into the serving window).
pub fn timing(
    fetched_at: Instant,
    expires_at: Instant,
    min_remaining: Duration,
    jitter: f64,
) -> Option<Timing> {
    let serve_until = expires_at.checked_sub(min_remaining)?;
    if serve_until <= fetched_at {
        return None;
    }
    let lifetime = expires_at - fetched_at;
    let low = min_remaining + REFRESH_LEAD;
    let high = (lifetime / 2).max(low);
    let left_at_refresh = low + (high - low).mul_f64(jitter.clamp(0.0, 1.0));
    let refresh_at = expires_at
        .checked_sub(left_at_refresh)
        .unwrap_or(fetched_at)
        .clamp(fetched_at, serve_until);
    Some(Timing {
        serve_until,
        refresh_at,
    })
}

/// What to do with a cached token at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve it.
    Serve,
    /// Serve it, and start a refresh if none is under way.
    ServeAndRefresh,
    /// Do not serve it: ask the service.
    Expired,
}

/// The decision for a token with `timing` at `now`.
pub fn decide(t: &Timing, now: Instant) -> Decision {
    if now >= t.serve_until {
        Decision::Expired
    } else if now >= t.refresh_at {
        Decision::ServeAndRefresh
    } else {
        Decision::Serve
    }
}

/// When to try again after a refresh at `now` that failed or brought nothing fresher:
/// half way to `serve_until` (spread by `jitter`, `0.0..=1.0`, over the next quarter),
/// at least [`MIN_RETRY`] later. A point past `serve_until` means no retry: the token
/// expires from the cache and the next request asks the service.
pub fn retry_at(now: Instant, serve_until: Instant, jitter: f64) -> Instant {
    let window = serve_until.saturating_duration_since(now);
    let wait = window / 2 + (window / 4).mul_f64(jitter.clamp(0.0, 1.0));
    now + wait.max(MIN_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_token_is_served_until_min_remaining_and_refreshed_before() {
        let t0 = Instant::now();
        // One hour of life, 1 minute minimum: served for 59 minutes, refreshed when
        // between 30 and 3 minutes are left.
        let exp = t0 + secs(3600);
        let early = timing(t0, exp, MIN, 0.0).unwrap();
        let late = timing(t0, exp, MIN, 1.0).unwrap();
        assert_eq!(early.serve_until, t0 + secs(3540));
        assert_eq!(early.refresh_at, exp - secs(180));
        assert_eq!(late.refresh_at, exp - secs(1800));
        let mid = timing(t0, exp, MIN, 0.5).unwrap();
        assert!(mid.refresh_at > late.refresh_at && mid.refresh_at < early.refresh_at);
        // (fetched, expires, now) → decision
        let table = [
            (0, Decision::Serve),
            (1799, Decision::Serve),
            (3419, Decision::Serve),
            (3420, Decision::ServeAndRefresh),
            (3539, Decision::ServeAndRefresh),
            (3540, Decision::Expired),
            (3600, Decision::Expired),
            (7200, Decision::Expired),
        ];
        for (at, want) in table {
            assert_eq!(decide(&early, t0 + secs(at)), want, "at {at} s");
        }
        assert_eq!(decide(&late, t0 + secs(1800)), Decision::ServeAndRefresh);
        assert_eq!(decide(&late, t0 + secs(1799)), Decision::Serve);
    }

    #[test]
    fn a_short_window_is_refreshed_at_once_and_no_window_is_not_cached() {
        let t0 = Instant::now();
        // 3 s of serving window: due for refresh from the start, never served after.
        let t = timing(t0, t0 + MIN + secs(3), MIN, 0.7).unwrap();
        assert_eq!(t.refresh_at, t0);
        assert_eq!(t.serve_until, t0 + secs(3));
        assert_eq!(decide(&t, t0), Decision::ServeAndRefresh);
        assert_eq!(decide(&t, t0 + secs(3)), Decision::Expired);
        for life in [0, 30, 60] {
            assert_eq!(timing(t0, t0 + secs(life), MIN, 0.5), None, "{life} s");
        }
        // Expired before it was fetched (a clock far ahead of the service's).
        assert_eq!(timing(t0 + secs(10), t0, MIN, 0.5), None);
    }

    #[test]
    fn long_lived_tokens_refresh_at_half_life_at_the_earliest() {
        let t0 = Instant::now();
        let day = secs(86_400);
        let t = timing(t0, t0 + day, AZURE_MIN_REMAINING, 1.0).unwrap();
        assert_eq!(t.refresh_at, t0 + day / 2);
        let t = timing(t0, t0 + day, AZURE_MIN_REMAINING, 0.0).unwrap();
        assert_eq!(t.refresh_at, t0 + day - AZURE_MIN_REMAINING - REFRESH_LEAD);
        assert_eq!(t.serve_until, t0 + day - AZURE_MIN_REMAINING);
    }

    #[test]
    fn retries_halve_the_window_and_are_never_too_close() {
        let now = Instant::now();
        assert_eq!(retry_at(now, now + secs(600), 0.0), now + secs(300));
        assert_eq!(retry_at(now, now + secs(600), 1.0), now + secs(450));
        assert_eq!(retry_at(now, now + secs(4), 0.0), now + MIN_RETRY);
        assert_eq!(retry_at(now, now, 0.5), now + MIN_RETRY);
    }

    #[test]
    fn every_token_kind_has_a_threshold_above_its_sdks() {
        // The strictest clients: MSAL 5 min, google-auth 3 min 45 s, botocore 15 min.
        assert!(min_remaining(Kind::AzureToken) > secs(300));
        assert!(min_remaining(Kind::GceToken) > secs(225));
        assert!(min_remaining(Kind::GceIdToken) > secs(225));
        assert!(min_remaining(Kind::AwsCredentials) > secs(900));
    }
}
