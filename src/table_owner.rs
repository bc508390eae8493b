//! Who owns the daemon's nftables tables: a setting the configuration reads and the
//! firewall applies. A leaf, it imports nothing of ours, so the configuration can
//! name it without depending on the firewall.

/// Whether the daemon's tables are owned by its netlink socket (`table_owner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableOwner {
    /// Owned and persistent where the kernel supports it (Linux 6.9+): no other process
    /// can change or delete them while the daemon runs, and they outlive it. Plain
    /// tables, restored on drift, elsewhere.
    Auto,
    /// Always plain tables, restored on drift: to exercise that path, or to let other
    /// tools (and `nft flush ruleset`) change the tables.
    Off,
}
