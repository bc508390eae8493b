//! imds-proxy: gives unmodified bridge-network Docker containers the cloud instance
//! metadata service (169.254.169.254) through an embedded proxy, intercepted by one
//! nftables table that fails closed.
//!
//! Layout: `config` (validated settings), `firewall` (pure plan, netlink apply, drift
//! watch, conntrack), `link` (own link and bridge watch), `proxy` (the HTTP side),
//! `reconcile` (the one owner of interception state) and `app` (ordered life).

pub mod addrs;
pub mod app;
pub mod cli;
pub mod config;
pub mod dns;
pub mod docker;
pub mod emulator;
pub mod errors;
pub mod firewall;
pub mod ifname;
pub mod link;
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
