//! Root tests with real packets through real nftables, each in network namespaces of
//! its own (see `harness::testbed`): the daemon runs in a "host" namespace whose bridge
//! stands in for docker0; a "container" namespace hangs off the bridge; a "cloud"
//! namespace serves the fake metadata service at 169.254.169.254. One file per topic.

#[path = "netns/dns.rs"]
mod dns;
#[path = "netns/emulator.rs"]
mod emulator;
#[path = "netns/interception.rs"]
mod interception;
#[path = "netns/ipv6.rs"]
mod ipv6;
#[path = "netns/lifecycle.rs"]
mod lifecycle;
#[path = "netns/operator.rs"]
mod operator;
#[path = "netns/policy.rs"]
mod policy;
#[path = "netns/takeover.rs"]
mod takeover;

use std::time::Duration;

/// A refusal, or a log line that follows at once, must come within this.
const QUICK: Duration = Duration::from_millis(1000);
