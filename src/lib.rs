//! imds-proxy: gives unmodified bridge-network Docker containers the cloud instance
//! metadata service (169.254.169.254) through an embedded proxy, intercepted by
//! nftables tables that fail closed.
//!
//! # Module map
//!
//! Each module owns one thing and imports only modules on earlier rows (the arrows of
//! the import graph all point down; there are no cycles).
//!
//! | module | owns | may import |
//! |---|---|---|
//! | `addrs`, `errors`, `request`, `ifname`, `table_owner`, `netns`, `notify`, `probe`, `metrics` | leaves: the metadata addresses and the host's own; how errors are shown; a request's canonical path and provider; interface names and bridge patterns; the tables' owner mode; the container behind a network namespace; systemd's notify socket; the start-up look for a real service; the Prometheus registry every part counts into | nothing of ours |
//! | `policy` | named policies, the decision for a path, rate budgets, which policy a caller gets | `request` |
//! | `providers` | each cloud's request rules: protocol checks, identity labels, AWS session tokens, the views a pinned identity gets | `request` |
//! | `dns` | the `metadata.google.internal` responder | `addrs` |
//! | `ports` | bridge ports: their peer namespaces and link notifications | `netns` |
//! | `config` | every key described once (`config::keys`), the validated [`config::Config`] | `addrs`, `ifname`, `table_owner`, `request`, `policy` |
//! | `firewall` | the pure ruleset plan, its atomic netlink apply, owned tables, drift watch, the start-up flow cut | `addrs`, `dns`, `ifname`, `table_owner` |
//! | `docker` | the container inventory: the pure picture (`state`), its one owner task, Docker's shapes | `errors`, `netns`, `ports` |
//! | `link` | the daemon's own link, link/route notifications, the macvlan parents' facts | `firewall` |
//! | `assume` | identities obtained for containers: AWS role sessions from STS (the signed call, the one owner of held credentials) | `docker`, `policy`, `providers` |
//! | `emulator` | the three emulated metadata services and their files | `errors`, `request`, `providers` |
//! | `reconcile` | the one owner of the interception state: events in, one apply out | `errors`, `firewall`, `link` |
//! | `proxy` | the HTTP side: who calls (`identify`), the decision (`admit`), the answer (`forward`: emulator, or cache and upstream), the audit line | everything above but `app`, `cli`, `reconcile`, `link` |
//! | `app` | the daemon's life: ordered start-up, the one command loop, link repair, reloads, shutdown; `emulate` | everything above |
//! | `cli` | the command line, built from the key table | `config` |

pub mod addrs;
pub mod app;
pub mod assume;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dns;
pub mod docker;
pub mod emulator;
pub mod errors;
pub mod firewall;
pub mod ifname;
pub mod link;
pub mod metrics;
pub mod netns;
pub mod notify;
pub mod policy;
pub mod ports;
pub mod probe;
pub mod providers;
pub mod proxy;
pub mod reconcile;
pub mod request;
pub mod table_owner;
