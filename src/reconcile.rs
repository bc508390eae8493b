//! The one owner of the interception state. Link events, drift reports, the periodic
//! verification and mode changes all arrive here as [`Event`]s; the reconciler keeps the
//! [`Snapshot`], recomputes the plan and applies it through a [`Firewall`].

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::{info, warn};

use crate::firewall::plan::{plan, EgressGuard, Mode, Snapshot};
use crate::firewall::watch::{self, ForeignChange};
use crate::firewall::{Firewall, FirewallError};
use crate::link::LinkEvent;

/// Something the reconciler must react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Link(LinkEvent),
    /// The full list of links, after a resync.
    Links(Vec<String>),
    /// Someone else changed the table.
    Drift(ForeignChange),
    /// Periodic check that the table still exists.
    Verify,
    /// Switch between open and closed.
    SetMode(Mode),
    /// The bridges of Docker's networks now (intercepted whatever their names).
    DockerBridges(BTreeSet<String>),
    /// The macvlan parents present now, with their MACs (after a link change).
    EgressGuards(Vec<EgressGuard>),
}

/// What handling an event did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Applied,
    Restored,
}

pub struct Reconciler {
    firewall: Arc<dyn Firewall>,
    snapshot: Snapshot,
    /// The bridges Docker's networks use, as Docker last said.
    docker_bridges: BTreeSet<String>,
    /// The last apply failed: the kernel may not hold the current plan, so the next
    /// event (at worst the periodic verification) applies again.
    dirty: bool,
}

impl Reconciler {
    pub fn new(firewall: Arc<dyn Firewall>, snapshot: Snapshot) -> Self {
        Self {
            firewall,
            snapshot,
            docker_bridges: BTreeSet::new(),
            dirty: false,
        }
    }

    /// The firewall this reconciler writes through (the only writer owned tables accept).
    pub fn firewall(&self) -> Arc<dyn Firewall> {
        self.firewall.clone()
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// A bridge to intercept: named by the configured patterns, or by Docker.
    fn is_container_bridge(&self, name: &str) -> bool {
        self.snapshot.patterns.iter().any(|p| p.matches(name)) || self.docker_bridges.contains(name)
    }

    /// Applies the current plan unconditionally.
    pub async fn apply(&mut self) -> Result<(), FirewallError> {
        let fw = self.firewall.clone();
        let rs = plan(&self.snapshot);
        let result = tokio::task::spawn_blocking(move || fw.apply(&rs))
            .await
            .map_err(|_| FirewallError::WorkerGone)
            .and_then(|r| r);
        self.dirty = result.is_err();
        result
    }

    async fn exists(&self) -> Result<bool, FirewallError> {
        let fw = self.firewall.clone();
        tokio::task::spawn_blocking(move || fw.exists())
            .await
            .map_err(|_| FirewallError::WorkerGone)?
    }

    /// Handles a batch of events with at most one apply.
    pub async fn handle(&mut self, events: Vec<Event>) -> Result<Outcome, FirewallError> {
        let before = self.snapshot.clone();
        let mut restore: Option<String> = None;
        for ev in events {
            match ev {
                // The set holds the bridges that exist, up or down: membership follows
                // the name, and a down bridge carries no traffic anyway.
                Event::Link(LinkEvent::Up(name) | LinkEvent::Down(name)) => {
                    if self.is_container_bridge(&name) && self.snapshot.bridges.insert(name.clone())
                    {
                        info!(bridge = %name, "container bridge appeared");
                    }
                }
                Event::Link(LinkEvent::Gone(name)) => {
                    if self.snapshot.bridges.remove(&name) {
                        info!(bridge = %name, "container bridge removed");
                    }
                }
                Event::Link(
                    LinkEvent::Resync | LinkEvent::AddressGone(_) | LinkEvent::MetadataRoute,
                ) => {}
                Event::Links(names) => {
                    let mut now = Snapshot::bridges_among(
                        &self.snapshot.patterns,
                        names.iter().map(String::as_str),
                    );
                    now.extend(self.docker_bridges.iter().cloned());
                    if now != self.snapshot.bridges {
                        info!(bridges = ?now, "container bridges resynchronised");
                        self.snapshot.bridges = now;
                    }
                }
                Event::Drift(change) => {
                    restore.get_or_insert_with(|| change.what.to_owned());
                }
                Event::Verify => match self.exists().await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!("nftables table is missing");
                        restore.get_or_insert_with(|| "table missing".to_owned());
                    }
                    // Could not look: putting the table back is the safe answer, and the
                    // other events of this batch still count.
                    Err(e) => {
                        warn!(error = %crate::errors::error_chain(&e), "failed to verify the nftables table");
                        restore.get_or_insert_with(|| "verification failed".to_owned());
                    }
                },
                Event::SetMode(m) => self.snapshot.mode = m,
                Event::DockerBridges(now) => {
                    for gone in self.docker_bridges.difference(&now) {
                        let by_name = self.snapshot.patterns.iter().any(|p| p.matches(gone));
                        if !by_name && self.snapshot.bridges.remove(gone) {
                            info!(bridge = %gone, "Docker network's bridge removed");
                        }
                    }
                    for new in now.difference(&self.docker_bridges) {
                        if self.snapshot.bridges.insert(new.clone()) {
                            info!(bridge = %new, "Docker network's bridge intercepted");
                        }
                    }
                    self.docker_bridges = now;
                }
                Event::EgressGuards(g) => {
                    if g != self.snapshot.egress_guards {
                        let parents: Vec<&str> = g.iter().map(|g| g.device.as_str()).collect();
                        info!(?parents, "macvlan parents guarded");
                        self.snapshot.egress_guards = g;
                    }
                }
            }
        }
        if let Some(cause) = restore {
            self.apply().await?;
            info!(cause = %cause, "nftables table restored");
            return Ok(Outcome::Restored);
        }
        if self.snapshot != before || self.dirty {
            self.apply().await?;
            return Ok(Outcome::Applied);
        }
        Ok(Outcome::Unchanged)
    }
}

/// The foreign changes of a batch in one line (see [`watch::summarise`]).
pub fn drift_in(events: &[Event]) -> Option<String> {
    watch::summarise(events.iter().filter_map(|e| match e {
        Event::Drift(c) => Some(c),
        _ => None,
    }))
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
