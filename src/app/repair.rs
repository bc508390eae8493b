//! Keeps the daemon's own link: if someone removes it, takes it down or takes its
//! address, it is put back. Without the address, DNATed container traffic would no
//! longer be local (the forward chain refuses it meanwhile).
//!
//! The kernel side is behind [`OwnLink`], so that when to repair, and what, is tested
//! with an in-memory link.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracing::{info, warn};

use crate::addrs::IMDS_V4;
use crate::errors::error_chain;
use crate::link::{self, LinkError, LinkEvent};
use crate::reconcile::Event;

/// What the daemon's link must be: its name and the addresses it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Wanted {
    pub name: String,
    pub addr: Ipv4Addr,
    pub addr6: Option<Ipv6Addr>,
    /// It also holds 169.254.169.254, for host processes to reach the emulator.
    pub holds_imds: bool,
}

/// The daemon's link in the kernel.
pub(super) trait OwnLink {
    /// Whether it exists, is up and holds its addresses.
    async fn intact(&self, wanted: &Wanted) -> Result<bool, LinkError>;
    /// Creates it (or brings it up) with its addresses; returns its index and kind.
    async fn restore(&self, wanted: &Wanted) -> Result<(u32, &'static str), LinkError>;
    /// Adds 169.254.169.254 to it.
    async fn add_imds(&self, wanted: &Wanted, index: u32) -> Result<(), LinkError>;
}

/// The link through rtnetlink.
pub(super) struct Netlink<'a>(pub &'a rtnetlink::Handle);

impl OwnLink for Netlink<'_> {
    async fn intact(&self, w: &Wanted) -> Result<bool, LinkError> {
        link::own_link_ok(self.0, &w.name, w.addr, w.addr6).await
    }

    async fn restore(&self, w: &Wanted) -> Result<(u32, &'static str), LinkError> {
        link::ensure_own_link(self.0, &w.name, w.addr, w.addr6).await
    }

    async fn add_imds(&self, w: &Wanted, index: u32) -> Result<(), LinkError> {
        link::add_own_address(self.0, &w.name, index, IMDS_V4).await
    }
}

/// What a look at the link came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Repair {
    /// Nothing says it was lost.
    Intact,
    Restored,
    /// It could not be put back; containers stay refused until it is.
    Failed,
}

/// Whether `events` report the link, or one of its addresses, gone. Pure.
fn reported_lost(w: &Wanted, events: &[Event]) -> bool {
    events.iter().any(|e| match e {
        Event::Link(LinkEvent::Gone(name) | LinkEvent::Down(name)) => *name == w.name,
        Event::Link(LinkEvent::AddressGone(ip)) => {
            *ip == IpAddr::V4(w.addr)
                || w.addr6.map(IpAddr::V6) == Some(*ip)
                || (w.holds_imds && *ip == IpAddr::V4(IMDS_V4))
        }
        _ => false,
    })
}

/// Puts the link back if `events` report it lost, or, on a `resync` (notifications can
/// be lost), if the kernel says it is not intact.
pub(super) async fn repair(
    link: &impl OwnLink,
    w: &Wanted,
    events: &[Event],
    resync: bool,
) -> Repair {
    let lost = reported_lost(w, events) || (resync && !link.intact(w).await.unwrap_or(false));
    if !lost {
        return Repair::Intact;
    }
    warn!(link = %w.name, address = %w.addr, "the proxy's link or address was removed or taken down");
    match link.restore(w).await {
        Ok((index, kind)) => {
            info!(link = %w.name, index, kind, "own link restored");
            // The emulator's address for host processes comes back with it.
            if w.holds_imds {
                if let Err(e) = link.add_imds(w, index).await {
                    warn!(error = %error_chain(&e), address = %IMDS_V4, "failed to restore the emulator's address for host processes");
                }
            }
            Repair::Restored
        }
        Err(e) => {
            warn!(error = %error_chain(&e), "failed to restore the own link; containers stay refused");
            Repair::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A link in memory: whether it is intact, whether restoring works, what was done.
    #[derive(Default)]
    struct MemoryLink {
        broken: bool,
        restore_fails: bool,
        done: RefCell<Vec<&'static str>>,
    }

    impl OwnLink for MemoryLink {
        async fn intact(&self, _: &Wanted) -> Result<bool, LinkError> {
            self.done.borrow_mut().push("looked");
            Ok(!self.broken)
        }

        async fn restore(&self, _: &Wanted) -> Result<(u32, &'static str), LinkError> {
            self.done.borrow_mut().push("restored");
            if self.restore_fails {
                return Err(LinkError::AddressTaken {
                    addr: IpAddr::V4(Ipv4Addr::new(169, 254, 93, 254)),
                    ifname: "eth9".into(),
                });
            }
            Ok((7, "dummy"))
        }

        async fn add_imds(&self, _: &Wanted, index: u32) -> Result<(), LinkError> {
            assert_eq!(index, 7, "the address goes on the link just restored");
            self.done.borrow_mut().push("imds added");
            Ok(())
        }
    }

    fn wanted(holds_imds: bool) -> Wanted {
        Wanted {
            name: "imdsproxy0".into(),
            addr: Ipv4Addr::new(169, 254, 93, 254),
            addr6: Some("fdf3:6f62:ab7c::254".parse().unwrap()),
            holds_imds,
        }
    }

    fn gone(name: &str) -> Event {
        Event::Link(LinkEvent::Gone(name.into()))
    }

    fn address_gone(ip: &str) -> Event {
        Event::Link(LinkEvent::AddressGone(ip.parse().unwrap()))
    }

    #[tokio::test]
    async fn the_link_is_restored_when_it_or_one_of_its_addresses_goes() {
        let down = Event::Link(LinkEvent::Down("imdsproxy0".into()));
        let cases: [(Vec<Event>, bool, Repair, &[&str]); 8] = [
            (vec![], false, Repair::Intact, &[]),
            (
                vec![gone("docker0"), Event::Verify],
                false,
                Repair::Intact,
                &[],
            ),
            (
                vec![gone("imdsproxy0")],
                false,
                Repair::Restored,
                &["restored"],
            ),
            (vec![down], false, Repair::Restored, &["restored"]),
            (
                vec![address_gone("169.254.93.254")],
                false,
                Repair::Restored,
                &["restored"],
            ),
            (
                vec![address_gone("fdf3:6f62:ab7c::254")],
                false,
                Repair::Restored,
                &["restored"],
            ),
            // 169.254.169.254 is the daemon's only while it serves the emulator.
            (
                vec![address_gone("169.254.169.254")],
                false,
                Repair::Intact,
                &[],
            ),
            (
                vec![address_gone("169.254.169.254")],
                true,
                Repair::Restored,
                &["restored", "imds added"],
            ),
        ];
        for (events, holds_imds, want, done) in cases {
            let link = MemoryLink::default();
            let got = repair(&link, &wanted(holds_imds), &events, false).await;
            assert_eq!(
                (got, link.done.take().as_slice()),
                (want, done),
                "{events:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_resync_looks_at_the_kernel_even_without_an_event() {
        let intact = MemoryLink::default();
        assert_eq!(
            repair(&intact, &wanted(false), &[], true).await,
            Repair::Intact
        );
        assert_eq!(intact.done.take(), ["looked"]);
        let broken = MemoryLink {
            broken: true,
            ..Default::default()
        };
        assert_eq!(
            repair(&broken, &wanted(false), &[], true).await,
            Repair::Restored
        );
        assert_eq!(broken.done.take(), ["looked", "restored"]);
    }

    #[tokio::test]
    async fn a_failed_restore_is_reported_and_adds_no_address() {
        let link = MemoryLink {
            restore_fails: true,
            ..Default::default()
        };
        let got = repair(&link, &wanted(true), &[gone("imdsproxy0")], false).await;
        assert_eq!(got, Repair::Failed);
        assert_eq!(link.done.take(), ["restored"]);
    }
}
