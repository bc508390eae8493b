//! Fail closed for the whole host: with the daemon in the test bed's host namespace,
//! nothing it was never told about reaches the metadata service directly. Root, own
//! namespaces, no Docker. One file per topic.

#[path = "wholehost/macvlan.rs"]
mod macvlan;
#[path = "wholehost/strangers.rs"]
mod strangers;

use std::time::Duration;

/// A refusal, or a log line that follows at once, must come within this.
const QUICK: Duration = Duration::from_millis(1000);
