//! The macvlan guard's interfaces: a macvlan child sends straight out of its parent,
//! past every IP hook of the host, so only a guard on the parent's egress stops it.
//! Which parents, followed as links and routes change.

use tracing::{info, warn};

use crate::config::Config;
use crate::firewall::plan::EgressGuard;
use crate::link::{self, LinkError, LinkEvent};
use crate::reconcile::Event;

/// Which interfaces the macvlan guard is on: a macvlan child sends straight out of its
/// parent, past every IP hook of the host, so only a guard on the parent's egress stops
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parents {
    /// No guard: `macvlan_parents` is an empty list, or the kernel has no egress hook.
    Off,
    /// The interfaces `macvlan_parents` names (replacing the default).
    Named(Vec<String>),
    /// The default: the interfaces the host's own routes to the metadata addresses leave
    /// by. Where the host reaches the metadata service, a macvlan child of the same
    /// interface reaches it too.
    Routes,
}

impl Parents {
    /// From the configuration, on a kernel that can (`egress`) or cannot hook a device's
    /// egress.
    pub fn of(cfg: &Config, egress: bool) -> Self {
        match &cfg.macvlan_parents {
            _ if !egress => Self::Off,
            Some(p) if p.is_empty() => Self::Off,
            Some(p) => Self::Named(p.clone()),
            None => Self::Routes,
        }
    }

    /// Whether a link or route event of `batch` may change the guarded interfaces (or
    /// their MACs). By default any link event may (a new uplink, one going down takes its
    /// routes along), and so may a route that covers a metadata address.
    fn touched_by(&self, batch: &[Event]) -> bool {
        batch.iter().any(|e| match (self, e) {
            (Self::Off, _) => false,
            (
                Self::Named(names),
                Event::Link(LinkEvent::Up(n) | LinkEvent::Down(n) | LinkEvent::Gone(n)),
            ) => names.contains(n),
            (
                Self::Routes,
                Event::Link(
                    LinkEvent::Up(_)
                    | LinkEvent::Down(_)
                    | LinkEvent::Gone(_)
                    | LinkEvent::MetadataRoute,
                ),
            ) => true,
            _ => false,
        })
    }
}

/// The interfaces to guard present now, each with its own MAC.
pub(super) async fn egress_guards(
    parents: &Parents,
    handle: &rtnetlink::Handle,
) -> Result<Vec<EgressGuard>, LinkError> {
    let names = match parents {
        Parents::Off => return Ok(vec![]),
        Parents::Named(names) => names.clone(),
        Parents::Routes => link::route_devices(handle, &link::METADATA_ADDRESSES).await?,
    };
    let macs = link::link_macs(handle, &names).await?;
    Ok(names
        .iter()
        .filter_map(|p| {
            macs.get(p).map(|mac| EgressGuard {
                device: p.clone(),
                mac: *mac,
            })
        })
        .collect())
}

/// An event with the interfaces to guard now, if a batch may have changed them (a
/// parent appeared, went, changed its MAC, a route to a metadata address moved, or links
/// were re-listed).
pub(super) async fn egress_event(
    parents: &Parents,
    handle: &rtnetlink::Handle,
    batch: &[Event],
    resync: bool,
) -> Option<Event> {
    if !(parents.touched_by(batch) || resync && *parents != Parents::Off) {
        return None;
    }
    match egress_guards(parents, handle).await {
        Ok(g) => Some(Event::EgressGuards(g)),
        Err(e) => {
            warn!(error = %crate::errors::error_chain(&e), "failed to read the interfaces to guard against macvlan children; the guard stays as it was");
            None
        }
    }
}

/// Says at start which interfaces' macvlan children are refused, and why; or, as a
/// warning, that none are and why.
pub(super) fn log_macvlan_guard(cfg: &Config, parents: &Parents, guards: &[EgressGuard]) {
    let guarded: Vec<&str> = guards.iter().map(|g| g.device.as_str()).collect();
    let refused = "macvlan children of these interfaces are refused the metadata address";
    match parents {
        Parents::Off if cfg.macvlan_parents.as_ref().is_some_and(Vec::is_empty) => warn!(
            "macvlan_parents is an empty list: no interface is guarded, macvlan children reach the metadata service directly"
        ),
        Parents::Off => warn!(
            "this kernel cannot hook a device's egress (Linux 5.16 or later with netfilter egress): no macvlan guard, macvlan children reach the metadata service directly"
        ),
        Parents::Named(names) => {
            if !guarded.is_empty() {
                info!(parents = ?guarded, why = "configured (macvlan_parents)", "{refused}");
            }
            let missing: Vec<&String> = names
                .iter()
                .filter(|p| !guarded.contains(&p.as_str()))
                .collect();
            if !missing.is_empty() {
                warn!(parents = ?missing, "macvlan_parents: no such Ethernet interface now; guarded once it appears");
            }
        }
        Parents::Routes if guarded.is_empty() => info!(
            "no route of the host's to the metadata addresses leaves by an Ethernet interface now: no macvlan parent guarded until one does"
        ),
        Parents::Routes => info!(
            parents = ?guarded,
            why = "the host's routes to the metadata addresses leave by them (default; set macvlan_parents to choose)",
            "{refused}"
        ),
    }
}
