//! What the daemon tells systemd (`Type=notify`, `WatchdogSec=`): `READY=1` once the
//! interception is live, so that units ordered after it (Docker) start only then, and
//! `WATCHDOG=1` only while the running loop keeps verifying its tables, so that a hung
//! daemon is restarted. Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Sends the daemon's state to the service manager, if one asked for it.
#[derive(Debug)]
pub struct Notifier {
    /// Whether `NOTIFY_SOCKET` was set at start.
    enabled: bool,
    /// How often to feed the watchdog (`None`: no watchdog asked for).
    pace: Option<Duration>,
    last_fed: Option<Instant>,
}

impl Notifier {
    /// From the environment systemd gives a `Type=notify` service.
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os("NOTIFY_SOCKET").is_some(),
            sd_notify::watchdog_enabled(),
        )
    }

    /// `watchdog`: the service manager's `WATCHDOG_USEC`. The watchdog is fed at a
    /// third of it, so one late verification still leaves a margin.
    pub fn new(enabled: bool, watchdog: Option<Duration>) -> Self {
        Self {
            enabled,
            pace: watchdog.filter(|_| enabled).map(|w| w / 3),
            last_fed: None,
        }
    }

    /// The interception is live: units ordered after this one may start.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// The tables were just verified (or restored): feeds the watchdog if it is due.
    /// Returns whether it did.
    pub fn healthy(&mut self, now: Instant) -> bool {
        let Some(pace) = self.pace else { return false };
        if self
            .last_fed
            .is_some_and(|t| now.saturating_duration_since(t) < pace)
        {
            return false;
        }
        self.last_fed = Some(now);
        self.send(&[NotifyState::Watchdog]);
        true
    }

    /// Shutting down: systemd shows it rather than treating the exit as a surprise.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn send(&self, state: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        match sd_notify::notify(state) {
            Ok(()) => debug!(?state, "told the service manager"),
            Err(e) => warn!(error = %e, "failed to notify the service manager"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_at_a_third_of_its_interval_and_only_when_asked() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Enabled but unsent: no NOTIFY_SOCKET in a plain test run, so nothing leaves.
        let mut n = Notifier::new(true, Some(ms(3000)));
        assert!(n.healthy(t0), "the first verification feeds at once");
        assert!(!n.healthy(t0 + ms(500)));
        assert!(!n.healthy(t0 + ms(999)));
        assert!(n.healthy(t0 + ms(1000)));
        assert!(!n.healthy(t0 + ms(1500)));
        assert!(n.healthy(t0 + ms(2100)));
        // No watchdog, or no service manager: never fed.
        assert!(!Notifier::new(true, None).healthy(t0));
        assert!(!Notifier::new(false, Some(ms(3000))).healthy(t0));
    }
}
