//! Which container is behind a bridge port: the kernel says which container a port
//! leads to, Docker says what that container is called and labelled.
//!
//! One task owns the picture ([`state::State`]). It follows Docker's event stream and
//! inspects a container, by id, once when it starts (name, labels, the addresses Docker
//! assigned); a port the proxy meets and does not know is looked into in the kernel
//! (the port's peer namespace, a process in it, that process's cgroup: the container
//! id), so a new container's first request waits on no list of all containers. A full
//! list of containers and networks is taken at start, after a reconnection and every
//! 30 s, off the request path. The result is an immutable [`Inventory`] published
//! through a `watch` channel, so request handlers read it without locks held across
//! awaits. When Docker is unreachable the last inventory keeps serving and the task
//! retries with backoff.

mod convert;
pub mod state;
mod task;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::ports::BridgePort;

pub use task::spawn;

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
    /// The image it runs, as Docker names it.
    pub image: String,
    /// Docker network name.
    pub network: String,
    pub ipv4: Ipv4Addr,
    /// Global IPv6 address on this network, if the network has IPv6.
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub mac: Option<String>,
    /// Interface index of the endpoint's host bridge port: what the kernel stamps the
    /// container's metadata connections with.
    pub port: Option<BridgePort>,
}

/// Every known container endpoint, by bridge port. Immutable once published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    by_port: HashMap<BridgePort, Arc<Endpoint>>,
    /// Running containers Docker reported.
    containers: usize,
    /// Ports looked into that lead to no container, and when: a request that arrived
    /// before that is answered by it.
    unowned: HashMap<BridgePort, Instant>,
    /// Docker answered last time: an unknown port may be a container whose start is
    /// still being reported, worth a short wait.
    pub connected: bool,
}

impl Inventory {
    /// The endpoint behind host bridge port `port`, if any.
    pub fn by_port(&self, port: BridgePort) -> Option<&Arc<Endpoint>> {
        self.by_port.get(&port)
    }

    /// Whether port `port` was found, at or after `t`, to lead to no container.
    pub fn unowned_since(&self, port: BridgePort, t: Instant) -> bool {
        self.unowned.get(&port).is_some_and(|at| *at >= t)
    }

    /// Every endpoint known by its port (a container on two networks appears twice).
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.by_port.values()
    }

    /// Endpoints known by their port.
    pub fn len(&self) -> usize {
        self.by_port.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_port.is_empty()
    }

    /// Running containers Docker reported.
    pub fn containers(&self) -> usize {
        self.containers
    }

    /// An inventory from Docker's container list, each endpoint on the port `port_of`
    /// gives it (by container id and network name). For tests and tools that stand in
    /// for the kernel.
    pub fn from_summaries(
        list: &[bollard::models::ContainerSummary],
        port_of: impl Fn(&str, &str) -> Option<BridgePort>,
    ) -> Self {
        let mut st = state::State::default();
        let mut networks = HashMap::new();
        for (nsid, c) in list.iter().filter_map(convert::from_summary).enumerate() {
            for net in c.networks.keys() {
                networks.insert(net.clone(), net.clone());
                if let Some(p) = port_of(&c.id.0, net) {
                    st.set_port(
                        p,
                        state::PortFacts {
                            bridge: net.clone(),
                            nsid: nsid as i32,
                            peer: None,
                        },
                    );
                }
            }
            st.set_nsid(nsid as i32, c.id.clone());
            st.set_container(c);
        }
        st.set_networks(networks);
        st.inventory(true)
    }
}

/// How many calls the inventory has made to the Docker API, by kind: the cost of a
/// container start is read from these.
#[derive(Debug, Default)]
pub struct ApiCalls {
    pub list_containers: AtomicU64,
    pub list_networks: AtomicU64,
    pub inspect_container: AtomicU64,
    pub inspect_network: AtomicU64,
}

impl ApiCalls {
    /// Counts one call (and says so at debug level, with the running total).
    pub fn count(&self, which: &AtomicU64, call: &'static str) {
        which.fetch_add(1, Ordering::Relaxed);
        crate::metrics::get()
            .docker_calls
            .get_or_create(&crate::metrics::KindLabels { kind: call })
            .inc();
        tracing::debug!(call, total = self.total(), "docker api call");
    }

    /// All calls so far (the event stream's one request per connection not counted).
    pub fn total(&self) -> u64 {
        [
            &self.list_containers,
            &self.list_networks,
            &self.inspect_container,
            &self.inspect_network,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// The live inventory, and ways to ask the task for more.
#[derive(Debug, Clone)]
pub struct InventoryHandle {
    pub rx: watch::Receiver<Arc<Inventory>>,
    /// Asks the inventory task to look into a bridge port no known container owns.
    /// With the port, the source address of the request that met it: a new container
    /// is held to that address until Docker's inspect gives the one Docker assigned.
    pub resolve: mpsc::UnboundedSender<(BridgePort, std::net::IpAddr)>,
    /// The Linux bridges of Docker's networks (every bridge-driver network, whatever its
    /// bridge is called, and `docker_gwbridge`): the interfaces to intercept.
    pub bridges: watch::Receiver<BTreeSet<String>>,
    pub calls: Arc<ApiCalls>,
}

impl InventoryHandle {
    /// A handle on a fixed inventory, with no task behind it (tests and tools).
    pub fn fixed(inv: Inventory) -> Self {
        let (tx, rx) = watch::channel(Arc::new(inv));
        let (btx, bridges) = watch::channel(BTreeSet::new());
        let (resolve, _) = mpsc::unbounded_channel();
        // A live inventory task never drops its senders; one that is gone means no news.
        std::mem::forget((tx, btx));
        Self {
            rx,
            resolve,
            bridges,
            calls: Arc::default(),
        }
    }
}
