//! Which container is behind an address: an inventory of container endpoints from the
//! Docker Engine API.
//!
//! One task owns the connection. It lists the running containers (one call gives every
//! endpoint with labels, addresses and MACs) and the networks (which bridge each one
//! uses), finds each endpoint's host bridge port (see [`crate::ports`]), then follows
//! the event stream and lists again after every container or network event, whenever
//! the proxy meets a port it does not know, on every reconnection and every 30 s.
//! The result is an immutable [`Inventory`] published through a `watch` channel, so
//! request handlers read it without locks held across awaits. When Docker is
//! unreachable the last inventory keeps serving and the task retries with backoff.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    EventsOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptions,
};
use bollard::Docker;
use futures::{FutureExt, StreamExt};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::ports::{PortMap, PortReader};

/// How often the inventory is re-listed without any event.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Events arriving within this window cause one re-list.
const DEBOUNCE: Duration = Duration::from_millis(20);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// A Docker container id (64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(pub String);

impl ContainerId {
    /// The 12-digit form Docker shows.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

/// One container on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub container: ContainerId,
    /// Name without Docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Docker network name.
    pub network: String,
    pub ipv4: Ipv4Addr,
    /// Global IPv6 address on this network, if the network has IPv6.
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub mac: Option<String>,
    /// Interface index of the endpoint's host bridge port: what the kernel stamps the
    /// container's metadata connections with. `None` if it could not be found; such an
    /// endpoint is never matched by a request.
    pub port: Option<u32>,
}

/// Every known container endpoint, by IPv4 address. Immutable once published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    by_ip: HashMap<Ipv4Addr, Arc<Endpoint>>,
    by_port: HashMap<u32, Arc<Endpoint>>,
    /// Docker answered the last list: an unknown port may be a container whose start
    /// is still being reported, worth a short wait.
    pub connected: bool,
    /// When the list this inventory was built from was requested: a request that
    /// arrived before it is answered by it.
    pub listed_at: Option<Instant>,
}

impl Inventory {
    /// The endpoint holding `ip`, if any. Tests only: an address alone names no caller
    /// (see [`Inventory::by_port`]).
    #[cfg(test)]
    pub(crate) fn lookup(&self, ip: Ipv4Addr) -> Option<&Arc<Endpoint>> {
        self.by_ip.get(&ip)
    }

    /// The endpoint behind host bridge port `port`, if any.
    pub fn by_port(&self, port: u32) -> Option<&Arc<Endpoint>> {
        self.by_port.get(&port)
    }

    /// Whether this inventory reflects a list requested at or after `t`.
    pub fn listed_since(&self, t: Instant) -> bool {
        self.listed_at.is_some_and(|l| l >= t)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Builds the inventory from Docker's container list. Pure. Containers on the
    /// host network have no address of their own and are left out; an address listed
    /// twice (which Docker never does for running containers) is left out entirely
    /// rather than given to either.
    pub fn from_summaries(
        list: &[bollard::models::ContainerSummary],
        port_of: impl Fn(&str, &str) -> Option<u32>,
    ) -> Self {
        let mut by_ip: HashMap<Ipv4Addr, Arc<Endpoint>> = HashMap::new();
        let mut clashes = Vec::new();
        for c in list {
            let Some(id) = c.id.clone() else { continue };
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| id.chars().take(12).collect());
            let labels: BTreeMap<String, String> =
                c.labels.clone().unwrap_or_default().into_iter().collect();
            let networks = c
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref());
            for (network, ep) in networks.into_iter().flatten() {
                let Some(ipv4) = ep
                    .ip_address
                    .as_deref()
                    .and_then(|a| a.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                let endpoint = Arc::new(Endpoint {
                    container: ContainerId(id.clone()),
                    name: name.clone(),
                    labels: labels.clone(),
                    network: network.clone(),
                    ipv4,
                    ipv6: ep
                        .global_ipv6_address
                        .as_deref()
                        .and_then(|a| a.parse().ok()),
                    mac: ep.mac_address.clone().filter(|m| !m.is_empty()),
                    port: port_of(&id, network),
                });
                if by_ip.insert(ipv4, endpoint).is_some() {
                    clashes.push(ipv4);
                }
            }
        }
        for ip in clashes {
            by_ip.remove(&ip);
        }
        let mut by_port: HashMap<u32, Arc<Endpoint>> = HashMap::new();
        let mut port_clashes = Vec::new();
        for e in by_ip.values() {
            if let Some(p) = e.port {
                if by_port.insert(p, e.clone()).is_some() {
                    port_clashes.push(p);
                }
            }
        }
        for p in port_clashes {
            by_port.remove(&p);
        }
        Self {
            by_ip,
            by_port,
            connected: true,
            listed_at: None,
        }
    }
}

/// The live inventory and a way to ask for a fresh one.
#[derive(Debug, Clone)]
pub struct InventoryHandle {
    pub rx: watch::Receiver<Arc<Inventory>>,
    /// Wakes the inventory task for an immediate re-list.
    pub kick: Arc<Notify>,
}

/// Starts the inventory task for the Docker socket at `socket`.
pub fn spawn(socket: String) -> InventoryHandle {
    // Connected until the first attempt says otherwise: a request in the first moments
    // waits for the first list (or the first failure) instead of being judged unknown.
    let (tx, rx) = watch::channel(Arc::new(Inventory {
        connected: true,
        ..Inventory::default()
    }));
    let kick = Arc::new(Notify::new());
    tokio::spawn(follow(socket, tx, kick.clone()));
    InventoryHandle { rx, kick }
}

/// What the inventory task keeps between lists.
struct Lister {
    ports: Option<PortReader>,
    /// Init process of each container seen, by id (a container keeps its pid).
    pids: HashMap<String, i64>,
}

async fn follow(socket: String, tx: watch::Sender<Arc<Inventory>>, kick: Arc<Notify>) {
    let mut backoff = BACKOFF_MIN;
    let mut was_down = false;
    let mut lister = Lister {
        ports: None,
        pids: HashMap::new(),
    };
    loop {
        match session(&socket, &tx, &kick, &mut lister, &mut was_down).await {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => {
                // Keep serving what is known, but stop waiting for news.
                tx.send_if_modified(|inv| {
                    let was = inv.connected;
                    if was {
                        let mut stale = (**inv).clone();
                        stale.connected = false;
                        *inv = Arc::new(stale);
                    }
                    was
                });
                if !was_down {
                    warn!(socket = %socket, error = %e, "Docker is unreachable; keeping the last known containers and retrying");
                    was_down = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One connection: list, then follow events (re-listing on each) until the stream
/// ends. Returns an error if Docker cannot be reached.
async fn session(
    socket: &str,
    tx: &watch::Sender<Arc<Inventory>>,
    kick: &Notify,
    lister: &mut Lister,
    was_down: &mut bool,
) -> Result<(), bollard::errors::Error> {
    let docker = Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)?
        .negotiate_version()
        .await?;
    // Only what changes endpoints: not exec, health checks and the like, which would
    // each cost a re-list.
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([
        ("type", vec!["container", "network"]),
        (
            "event",
            vec![
                "create",
                "start",
                "restart",
                "die",
                "destroy",
                "connect",
                "disconnect",
            ],
        ),
    ]);
    // Subscribe first, then list: nothing that happens in between is missed.
    let mut events = docker.events(Some(
        EventsOptionsBuilder::default().filters(&filters).build(),
    ));
    lister.resync(&docker, tx).await?;
    if *was_down {
        info!(
            containers = tx.borrow().len(),
            "Docker is back; inventory resynchronised"
        );
        *was_down = false;
    }
    let mut tick = tokio::time::interval(RESYNC_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(_)) => {
                    // Let a burst (start = create + connect + start) settle into one list.
                    tokio::time::sleep(DEBOUNCE).await;
                    while let Some(Some(more)) = events.next().now_or_never() {
                        more?;
                    }
                    lister.resync(&docker, tx).await?;
                }
                Some(Err(e)) => return Err(e),
                None => return Err(bollard::errors::Error::DockerStreamError { error: "event stream ended".into() }),
            },
            _ = kick.notified() => lister.resync(&docker, tx).await?,
            _ = tick.tick() => lister.resync(&docker, tx).await?,
        }
    }
}

impl Lister {
    /// Lists containers and networks, finds every endpoint's bridge port and publishes
    /// the result (always: its `listed_at` tells waiting requests they have an answer).
    async fn resync(
        &mut self,
        docker: &Docker,
        tx: &watch::Sender<Arc<Inventory>>,
    ) -> Result<(), bollard::errors::Error> {
        let started = Instant::now();
        let list = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default().all(false).build(),
            ))
            .await?;
        let networks = docker.list_networks(None::<ListNetworksOptions>).await?;
        let bridges: HashMap<String, String> = networks
            .iter()
            .filter_map(|n| Some((n.name.clone()?, bridge_of(n)?)))
            .collect();
        // Only containers with an endpoint on a bridge network have a port to find.
        let live: std::collections::HashSet<&str> = list
            .iter()
            .filter(|c| {
                c.network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .is_some_and(|n| n.keys().any(|name| bridges.contains_key(name)))
            })
            .filter_map(|c| c.id.as_deref())
            .collect();
        self.pids.retain(|id, _| live.contains(id.as_str()));
        let (ports, nsids) = self.ports_and_nsids(docker, &live).await;
        let port_of =
            |id: &str, network: &str| ports.port_of(bridges.get(network)?, *nsids.get(id)?);
        let mut inventory = Inventory::from_summaries(&list, port_of);
        inventory.listed_at = Some(started);
        debug!(
            endpoints = inventory.len(),
            ports = inventory.by_port.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "inventory listed"
        );
        tx.send_replace(Arc::new(inventory));
        Ok(())
    }

    /// The host's bridge ports and the namespace id of every running container. A
    /// container's pid is remembered; a remembered pid that no longer leads to the
    /// container (it was restarted) is looked up again. Errors leave ports unresolved
    /// (their containers match no request) and are logged.
    async fn ports_and_nsids(
        &mut self,
        docker: &Docker,
        live: &std::collections::HashSet<&str>,
    ) -> (PortMap, HashMap<String, i32>) {
        if self.ports.is_none() {
            match PortReader::open() {
                Ok(r) => self.ports = Some(r),
                Err(e) => {
                    warn!(error = %crate::proxy::error_chain(&e), "cannot read bridge ports; containers cannot be identified");
                    return Default::default();
                }
            }
        }
        let reader = self.ports.as_ref().expect("opened above");
        // Ports first: listing them assigns the peer namespaces their ids.
        let ports = match reader.ports().await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %crate::proxy::error_chain(&e), "cannot read bridge ports; containers cannot be identified");
                self.ports = None;
                return Default::default();
            }
        };
        let mut nsids = HashMap::new();
        for id in live {
            if let Some(pid) = self.pids.get(*id) {
                if let Some(n) = reader.nsid_of(*pid, id).await {
                    nsids.insert(id.to_string(), n);
                    continue;
                }
            }
            let pid = docker
                .inspect_container(id, None)
                .await
                .ok()
                .and_then(|c| c.state?.pid)
                .filter(|p| *p > 0);
            let Some(pid) = pid else {
                self.pids.remove(*id);
                continue;
            };
            self.pids.insert(id.to_string(), pid);
            if let Some(n) = reader.nsid_of(pid, id).await {
                nsids.insert(id.to_string(), n);
            }
        }
        (ports, nsids)
    }
}

/// The Linux bridge a Docker network of the `bridge` driver uses.
fn bridge_of(n: &bollard::models::Network) -> Option<String> {
    if n.driver.as_deref() != Some("bridge") {
        return None;
    }
    if let Some(name) = n
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
    {
        return Some(name.clone());
    }
    let id = n.id.as_deref()?;
    Some(format!("br-{}", &id[..id.len().min(12)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerSummary, ContainerSummaryNetworkSettings, EndpointSettings};

    fn summary(
        id: &str,
        name: &str,
        nets: &[(&str, &str, &str)],
        labels: &[(&str, &str)],
    ) -> ContainerSummary {
        ContainerSummary {
            id: Some(id.into()),
            names: Some(vec![format!("/{name}")]),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: Some(
                    nets.iter()
                        .map(|(n, ip, mac)| {
                            (
                                n.to_string(),
                                EndpointSettings {
                                    ip_address: Some(ip.to_string()),
                                    mac_address: Some(mac.to_string()),
                                    ..Default::default()
                                },
                            )
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_network_of_a_container_maps_to_it() {
        let inv = Inventory::from_summaries(
            &[
                summary(
                    "a".repeat(64).as_str(),
                    "web",
                    &[
                        ("bridge", "172.17.0.2", "02:42:ac:11:00:02"),
                        ("app", "172.18.0.5", "02:42:ac:12:00:05"),
                    ],
                    &[("imds-proxy.policy", "deny")],
                ),
                summary(
                    "b".repeat(64).as_str(),
                    "db",
                    &[("bridge", "172.17.0.3", "")],
                    &[],
                ),
            ],
            |_, _| None,
        );
        assert_eq!(inv.len(), 3);
        let web = inv.lookup("172.18.0.5".parse().unwrap()).unwrap();
        assert_eq!(
            (
                web.name.as_str(),
                web.network.as_str(),
                web.container.short()
            ),
            ("web", "app", "aaaaaaaaaaaa")
        );
        assert_eq!(
            web.labels.get("imds-proxy.policy").map(String::as_str),
            Some("deny")
        );
        assert_eq!(inv.lookup("172.17.0.3".parse().unwrap()).unwrap().mac, None);
        assert!(inv.lookup("172.17.0.4".parse().unwrap()).is_none());
    }

    #[test]
    fn each_endpoint_is_found_by_its_own_port_and_a_shared_port_finds_no_one() {
        let inv = Inventory::from_summaries(
            &[
                summary(
                    "a",
                    "web",
                    &[("bridge", "172.17.0.2", "m1"), ("app", "172.18.0.2", "m2")],
                    &[],
                ),
                summary("b", "db", &[("bridge", "172.17.0.3", "m3")], &[]),
                summary("c", "odd", &[("bridge", "172.17.0.4", "m4")], &[]),
            ],
            |id, net| match (id, net) {
                ("a", "bridge") => Some(10),
                ("a", "app") => Some(11),
                // Never by Docker: two endpoints claiming one port.
                ("b", _) | ("c", _) => Some(12),
                _ => None,
            },
        );
        assert_eq!(inv.by_port(10).unwrap().network, "bridge");
        assert_eq!(inv.by_port(11).unwrap().ipv4.to_string(), "172.18.0.2");
        assert!(inv.by_port(12).is_none());
        assert!(!inv.listed_since(std::time::Instant::now()));
    }

    #[test]
    fn host_network_containers_and_clashing_addresses_identify_no_one() {
        let inv = Inventory::from_summaries(
            &[
                summary("h", "hostnet", &[("host", "", "")], &[]),
                summary("x", "one", &[("bridge", "172.17.0.9", "m1")], &[]),
                summary("y", "two", &[("bridge", "172.17.0.9", "m2")], &[]),
            ],
            |_, _| None,
        );
        assert!(inv.is_empty(), "{inv:?}");
    }
}
