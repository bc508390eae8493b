//! The daemon's nftables table: the pure plan, the netlink writer, the drift watcher and
//! conntrack clean-up.
//!
//! Kernel side effects sit behind [`Firewall`], so the reconciler can run in plain
//! `cargo test` against [`MemoryFirewall`].

pub mod conntrack;
pub mod nfnl;
pub mod nft;
pub mod plan;
pub mod watch;

use std::sync::{Arc, Mutex};

pub use crate::table_owner::TableOwner;
pub use plan::{plan, BridgePattern, Mode, Ruleset, Snapshot};

/// Errors of the firewall module; each names the action that failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nf_tables is not available in this kernel (netfilter netlink answered: {0})")]
    Unavailable(#[source] std::io::Error),
    #[error("the kernel refused an nftables feature the daemon needs (nf_tables with NAT, reject and conntrack support) while trying to {action}")]
    Unsupported {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("not permitted to {action}: run as root (or with CAP_NET_ADMIN); as root, another process owns a table of the same name (nftables `flags owner`) until it ends")]
    NotPermitted {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to {action}")]
    Netlink {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the nftables worker thread is gone")]
    WorkerGone,
}

impl FirewallError {
    /// Classifies a netlink errno so the user reads what to do rather than an errno.
    pub(crate) fn from_io(action: &'static str, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::NotPermitted { action, source: e },
            Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) => Self::Unavailable(e),
            Some(libc::EOPNOTSUPP) => Self::Unsupported { action, source: e },
            _ => Self::Netlink { action, source: e },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_become_advice() {
        let e = |n| {
            FirewallError::from_io(
                "replace the nftables table",
                std::io::Error::from_raw_os_error(n),
            )
            .to_string()
        };
        let eperm = e(libc::EPERM);
        assert!(eperm.contains("not permitted to replace the nftables table: run as root"));
        assert!(eperm.contains("another process owns a table of the same name"));
        assert!(e(libc::EPROTONOSUPPORT).contains("nf_tables is not available in this kernel"));
        assert!(e(libc::EOPNOTSUPP).contains("refused an nftables feature"));
        assert_eq!(e(libc::ENOENT), "failed to replace the nftables table");
    }
}

/// What the daemon needs from the kernel's packet filter. Implementations replace the
/// whole table atomically: after `apply` either the new ruleset is in force or, on error,
/// the previous one still is.
pub trait Firewall: Send + Sync + 'static {
    /// Replaces the daemon's table with `ruleset` in one atomic batch.
    fn apply(&self, ruleset: &Ruleset) -> Result<(), FirewallError>;
    /// Deletes the daemon's table; returns whether it existed.
    fn remove(&self) -> Result<bool, FirewallError>;
    /// Whether the daemon's table exists.
    fn exists(&self) -> Result<bool, FirewallError>;
    /// The netlink port id this firewall writes from, so the drift watcher can tell the
    /// daemon's own changes from other people's.
    fn writer_portid(&self) -> Option<u32>;
}

/// In-memory firewall for tests: remembers the last ruleset and counts applies.
#[derive(Default, Clone)]
pub struct MemoryFirewall {
    inner: Arc<Mutex<MemoryState>>,
    /// Fail this many of the next applies (a kernel that refuses a batch).
    fail_next: Arc<Mutex<usize>>,
}

/// What a [`MemoryFirewall`] holds.
#[derive(Default, Debug, Clone)]
pub struct MemoryState {
    /// The table in force, if any.
    pub table: Option<Ruleset>,
    /// Every ruleset applied, in order.
    pub history: Vec<Ruleset>,
}

impl MemoryFirewall {
    /// A copy of the current state.
    pub fn state(&self) -> MemoryState {
        self.inner.lock().expect("memory firewall lock").clone()
    }
    /// Makes the next `n` applies fail and change nothing.
    pub fn fail_next_applies(&self, n: usize) {
        *self.fail_next.lock().expect("memory firewall lock") = n;
    }
    /// Simulates someone deleting the table behind the daemon's back.
    pub fn delete_behind_back(&self) {
        self.inner.lock().expect("memory firewall lock").table = None;
    }
}

impl Firewall for MemoryFirewall {
    fn apply(&self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        let mut fail = self.fail_next.lock().expect("memory firewall lock");
        if *fail > 0 {
            *fail -= 1;
            return Err(FirewallError::Netlink {
                action: "apply (simulated failure)",
                source: std::io::Error::from_raw_os_error(libc::ENOBUFS),
            });
        }
        let mut s = self.inner.lock().expect("memory firewall lock");
        s.table = Some(ruleset.clone());
        s.history.push(ruleset.clone());
        Ok(())
    }
    fn remove(&self) -> Result<bool, FirewallError> {
        Ok(self
            .inner
            .lock()
            .expect("memory firewall lock")
            .table
            .take()
            .is_some())
    }
    fn exists(&self) -> Result<bool, FirewallError> {
        Ok(self
            .inner
            .lock()
            .expect("memory firewall lock")
            .table
            .is_some())
    }
    fn writer_portid(&self) -> Option<u32> {
        None
    }
}
