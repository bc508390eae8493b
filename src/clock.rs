//! The calendar, in the one unit the daemon reports it in: whole seconds since the
//! Unix epoch (0 for a clock set before it).

use std::time::SystemTime;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
