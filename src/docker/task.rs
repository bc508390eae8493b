//! The inventory task: the one owner of [`State`]. Docker events, the proxy's questions
//! about unknown ports and the results of the work it started arrive here; the work
//! itself (Docker calls, kernel look-ups) runs in jobs beside it, so a slow Docker never
//! holds up a kernel answer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use bollard::Docker;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::convert::{self, Change};
use super::state::{Addresses, Container, PortFacts, State};
use super::{ApiCalls, ContainerId, Inventory, InventoryHandle};
use crate::ports::{BridgePort, LinkFacts, PortReader};

/// How often the inventory is re-listed without any event.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

type Events = Pin<
    Box<dyn Stream<Item = Result<bollard::models::EventMessage, bollard::errors::Error>> + Send>,
>;

/// Starts the inventory task for the Docker socket at `socket`.
pub fn spawn(socket: String) -> InventoryHandle {
    // Connected until the first attempt says otherwise: a request in the first moments
    // waits for the first answer instead of being judged unknown.
    let (tx, rx) = watch::channel(Arc::new(Inventory {
        connected: true,
        ..Inventory::default()
    }));
    let (bridges_tx, bridges) = watch::channel(BTreeSet::new());
    let (resolve, requests) = mpsc::unbounded_channel();
    let calls = Arc::new(ApiCalls::default());
    let task = Task {
        socket,
        state: State::default(),
        tx,
        bridges_tx,
        calls: calls.clone(),
        kernel: None,
        docker: None,
        connected: true,
        was_down: false,
        connecting: false,
        inspecting: HashSet::new(),
        inspected_at: HashMap::new(),
        waiting: HashMap::new(),
        resolving: HashSet::new(),
        fetching: HashSet::new(),
        tried: HashSet::new(),
        link_names: HashMap::new(),
        gone_links: HashSet::new(),
        jobs: JoinSet::new(),
    };
    let (links_tx, links) = mpsc::unbounded_channel();
    if let Err(e) = crate::ports::watch_links(links_tx) {
        warn!(error = %crate::errors::error_chain(&e), "cannot follow link changes; ports are read on demand");
    }
    tokio::spawn(task.run(requests, links));
    InventoryHandle {
        rx,
        resolve,
        bridges,
        calls,
    }
}

/// What a job found.
enum Done {
    Connected(Result<Docker, bollard::errors::Error>),
    Listed(Instant, Result<Listing, bollard::errors::Error>),
    Inspected(
        ContainerId,
        Result<Option<(Container, Option<i32>)>, bollard::errors::Error>,
    ),
    Resolved(BridgePort, Instant, Resolution),
    Networks(Result<HashMap<String, String>, bollard::errors::Error>),
    Endpoints(
        String,
        Result<Vec<(ContainerId, Addresses)>, bollard::errors::Error>,
    ),
}

/// A full list: Docker's containers and networks, the kernel's ports and which
/// container each peer namespace belongs to.
struct Listing {
    containers: Vec<Container>,
    networks: HashMap<String, String>,
    ports: Option<HashMap<BridgePort, PortFacts>>,
    nsids: HashMap<i32, ContainerId>,
}

/// What the kernel says about one port.
enum Resolution {
    /// Not a port whose peer is in another namespace (or gone).
    NoPort,
    /// A port whose peer namespace holds no container's process.
    NoContainer(PortFacts),
    /// The container, and the address its request came from.
    Container(PortFacts, ContainerId, Vec<IpAddr>),
    /// The kernel could not be asked.
    Failed,
}

struct Task {
    socket: String,
    state: State,
    tx: watch::Sender<Arc<Inventory>>,
    bridges_tx: watch::Sender<BTreeSet<String>>,
    calls: Arc<ApiCalls>,
    kernel: Option<Arc<PortReader>>,
    docker: Option<Docker>,
    connected: bool,
    was_down: bool,
    connecting: bool,
    /// Containers being inspected, and when each was last inspected.
    inspecting: HashSet<ContainerId>,
    inspected_at: HashMap<ContainerId, Instant>,
    /// Ports that lead to a container being inspected.
    waiting: HashMap<ContainerId, Vec<BridgePort>>,
    resolving: HashSet<BridgePort>,
    /// Networks whose endpoint list is being fetched.
    fetching: HashSet<String>,
    /// Containers whose endpoint on a network was looked for in that network's list.
    tried: HashSet<(String, ContainerId)>,
    /// Every link's name, by index, from the kernel's notifications (bridges' names).
    link_names: HashMap<u32, String>,
    /// Links the kernel said are gone since the last full listing.
    gone_links: HashSet<u32>,
    jobs: JoinSet<Done>,
}

async fn next_event(
    events: &mut Option<Events>,
) -> Option<Result<bollard::models::EventMessage, bollard::errors::Error>> {
    match events {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<(BridgePort, IpAddr)>,
        mut links: mpsc::UnboundedReceiver<LinkFacts>,
    ) {
        let mut events: Option<Events> = None;
        let mut backoff = BACKOFF_MIN;
        let mut retry = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = next_event(&mut events) => match ev {
                    Some(Ok(ev)) => self.on_event(&ev),
                    other => {
                        let why = match other {
                            Some(Err(e)) => e.to_string(),
                            _ => "event stream ended".into(),
                        };
                        events = None;
                        self.lost(&why);
                        retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                },
                Some((port, from)) = requests.recv() => self.resolve(port, from),
                Some(f) = links.recv() => self.on_link(f),
                Some(done) = self.jobs.join_next() => {
                    let Ok(done) = done else { continue };
                    if let Some(stream) = self.on_done(done, &mut backoff) {
                        events = Some(stream);
                    } else if self.docker.is_none() && !self.connecting {
                        retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                _ = tick.tick() => if let Some(d) = &self.docker { self.spawn_list(d.clone()) },
                _ = &mut retry, if self.docker.is_none() && !self.connecting => {
                    self.spawn_connect();
                    // Parked until a failed attempt sets it again.
                    retry.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86400));
                }
            }
        }
    }

    /// What the kernel's link notifications say about bridge ports.
    fn on_link(&mut self, f: LinkFacts) {
        match f {
            LinkFacts::Link {
                index,
                name,
                master,
                peer_nsid,
                peer_index,
            } => {
                self.link_names.insert(index, name);
                let port = BridgePort(index);
                let bridge = master.and_then(|m| self.link_names.get(&m).cloned());
                match (bridge, peer_nsid) {
                    (Some(bridge), Some(nsid)) => {
                        let facts = PortFacts {
                            bridge,
                            nsid,
                            peer: peer_index,
                        };
                        if self.state.port(port) != Some(&facts) {
                            // A port whose namespace is no known container's adds no
                            // endpoint: the inventory is rebuilt only when one can change.
                            let names_one = self.state.container_of_nsid(nsid).is_some();
                            self.state.set_port(port, facts);
                            if names_one || self.published(port) {
                                self.publish();
                            }
                        }
                    }
                    _ => self.forget_port(port),
                }
            }
            LinkFacts::Gone(index) => {
                self.link_names.remove(&index);
                self.gone_links.insert(index);
                self.forget_port(BridgePort(index));
            }
            LinkFacts::Resync => {
                if let Some(d) = self.docker.clone() {
                    self.spawn_list(d);
                }
            }
        }
    }

    /// A link that is no bridge port (any more).
    fn forget_port(&mut self, index: BridgePort) {
        if self.state.port(index).is_some() {
            self.state.remove_port(index);
            if self.published(index) {
                self.publish();
            }
        }
    }

    /// Whether the published inventory names a container behind port `index`.
    fn published(&self, index: BridgePort) -> bool {
        self.tx.borrow().by_port(index).is_some()
    }

    fn kernel(&mut self) -> Option<Arc<PortReader>> {
        if self.kernel.is_none() {
            match PortReader::open() {
                Ok(r) => self.kernel = Some(Arc::new(r)),
                Err(e) => {
                    warn!(error = %crate::errors::error_chain(&e), "cannot read bridge ports; containers cannot be identified");
                }
            }
        }
        self.kernel.clone()
    }

    fn publish(&self) {
        self.tx
            .send_replace(Arc::new(self.state.inventory(self.connected)));
        let bridges = self.state.docker_bridges();
        self.bridges_tx.send_if_modified(|b| {
            let changed = *b != bridges;
            *b = bridges;
            changed
        });
    }

    /// Docker went away: keep serving what is known, stop waiting for news.
    fn lost(&mut self, why: &str) {
        self.docker = None;
        if self.connected {
            self.connected = false;
            self.publish();
        }
        if !self.was_down {
            crate::metrics::get().docker_outages.inc();
            warn!(socket = %self.socket, error = %why, "Docker is unreachable; keeping the last known containers and retrying");
            self.was_down = true;
        }
    }

    fn spawn_connect(&mut self) {
        self.connecting = true;
        let socket = self.socket.clone();
        self.jobs.spawn(async move {
            let docker = async {
                Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)?
                    .negotiate_version()
                    .await
            };
            Done::Connected(docker.await)
        });
    }

    fn spawn_list(&mut self, docker: Docker) {
        let kernel = self.kernel();
        let calls = self.calls.clone();
        self.jobs.spawn(async move {
            let asked = Instant::now();
            Done::Listed(asked, list(&docker, kernel.as_deref(), &calls).await)
        });
    }

    fn on_event(&mut self, ev: &bollard::models::EventMessage) {
        match convert::change(ev) {
            Change::Created(id, name, labels) => self.state.set_created(id, name, labels),
            Change::Inspect(id) => self.inspect(id),
            Change::Reinspect(id) => {
                if self.state.container(&id).is_some() {
                    self.inspect(id)
                }
            }
            Change::Gone(id) => {
                self.inspected_at.remove(&id);
                self.tried.retain(|(_, c)| *c != id);
                if self.state.remove_container(&id) {
                    debug!(container = %id.short(), "container gone");
                    self.publish();
                }
            }
            Change::Networks => {
                if let Some(d) = self.docker.clone() {
                    let calls = self.calls.clone();
                    self.jobs.spawn(async move {
                        calls.count(&calls.list_networks, "list_networks");
                        let list = d
                            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
                            .await;
                        Done::Networks(list.map(|l| convert::bridges(&l)))
                    });
                }
            }
            Change::Nothing => {}
        }
    }

    /// Inspects a container by id (one call, however many ask at once).
    fn inspect(&mut self, id: ContainerId) {
        let Some(docker) = self.docker.clone() else {
            return;
        };
        if !self.inspecting.insert(id.clone()) {
            return;
        }
        let kernel = self.kernel();
        let calls = self.calls.clone();
        self.jobs.spawn(async move {
            calls.count(&calls.inspect_container, "inspect_container");
            let found = docker.inspect_container(&id.0, None).await;
            let result = match found {
                Ok(c) => match convert::from_inspect(&c) {
                    Some(c) => {
                        // Its namespace's id, from its init process (checked against
                        // its cgroup, so a recycled pid lends no namespace).
                        let nsid = match (&kernel, c.pid) {
                            (Some(k), Some(pid)) => k.nsid_of(pid, &c.id.0).await,
                            _ => None,
                        };
                        Ok(Some((c, nsid)))
                    }
                    None => Ok(None),
                },
                // Gone between the event and the inspect.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(None),
                Err(e) => Err(e),
            };
            Done::Inspected(id, result)
        });
    }

    /// Looks into a port the proxy met and no known container owns, for a request
    /// from address `from`.
    fn resolve(&mut self, port: BridgePort, from: IpAddr) {
        if !self.resolving.insert(port) {
            return;
        }
        let Some(kernel) = self.kernel() else {
            self.resolving.remove(&port);
            return;
        };
        let known_port = self.state.port(port).cloned();
        // The container the port's namespace was last tied to, and its init process,
        // to be checked rather than searched for.
        let known = known_port
            .as_ref()
            .and_then(|f| self.state.nsid_pid(f.nsid));
        self.jobs.spawn(async move {
            let asked = Instant::now();
            let r = resolve_port(&kernel, port, known_port, known, from).await;
            Done::Resolved(port, asked, r)
        });
    }

    fn on_done(&mut self, done: Done, backoff: &mut Duration) -> Option<Events> {
        match done {
            Done::Connected(Ok(docker)) => {
                self.connecting = false;
                *backoff = BACKOFF_MIN;
                // Subscribe first, then list: nothing that happens in between is missed.
                let filters: HashMap<&str, Vec<&str>> = HashMap::from([
                    ("type", vec!["container", "network"]),
                    (
                        "event",
                        vec![
                            "start",
                            "restart",
                            "rename",
                            "die",
                            "destroy",
                            "connect",
                            "disconnect",
                            "create",
                        ],
                    ),
                ]);
                let stream: Events = Box::pin(docker.events(Some(
                    EventsOptionsBuilder::default().filters(&filters).build(),
                )));
                self.docker = Some(docker.clone());
                self.spawn_list(docker);
                return Some(stream);
            }
            Done::Connected(Err(e)) => {
                self.connecting = false;
                self.lost(&e.to_string());
            }
            Done::Listed(asked, Ok(l)) => self.on_listed(asked, l),
            Done::Listed(_, Err(e)) => self.lost(&e.to_string()),
            Done::Inspected(id, result) => self.on_inspected(id, result),
            Done::Resolved(port, asked, r) => self.on_resolved(port, asked, r),
            Done::Networks(Ok(n)) => {
                self.state.set_networks(n);
                self.publish();
            }
            Done::Networks(Err(e)) => warn!(error = %e, "cannot list Docker's networks"),
            Done::Endpoints(network, result) => {
                self.fetching.remove(&network);
                match result {
                    Ok(eps) => {
                        if let Some(bridge) = self.state.bridge_of_network(&network) {
                            self.state.set_hidden(&bridge, eps);
                            self.publish();
                        }
                    }
                    Err(e) => {
                        warn!(network = %network, error = %e, "cannot inspect a Docker network")
                    }
                }
            }
        }
        None
    }

    fn on_listed(&mut self, asked: Instant, l: Listing) {
        let was_down = std::mem::take(&mut self.was_down);
        self.connected = true;
        // Containers inspected since the list was asked for are newer than it.
        let newer: HashSet<ContainerId> = self
            .inspected_at
            .iter()
            .filter(|(_, at)| **at >= asked)
            .map(|(id, _)| id.clone())
            .collect();
        self.state.set_containers(l.containers, &newer);
        self.state.set_networks(l.networks);
        if let Some(ports) = l.ports {
            self.state.set_ports(ports);
            self.gone_links.clear();
        }
        for (nsid, id) in l.nsids {
            self.state.set_nsid(nsid, id);
        }
        self.publish();
        self.fetch_missing_endpoints();
        let inv = self.tx.borrow().clone();
        debug!(
            containers = inv.containers(),
            endpoints = inv.len(),
            elapsed_us = asked.elapsed().as_micros() as u64,
            "inventory listed"
        );
        if was_down {
            info!(
                containers = inv.containers(),
                "Docker is back; inventory resynchronised"
            );
        }
    }

    fn on_inspected(
        &mut self,
        id: ContainerId,
        result: Result<Option<(Container, Option<i32>)>, bollard::errors::Error>,
    ) {
        self.inspecting.remove(&id);
        self.inspected_at.insert(id.clone(), Instant::now());
        let waiting = self.waiting.remove(&id).unwrap_or_default();
        match result {
            Ok(Some((c, nsid))) => {
                if let Some(n) = nsid {
                    self.state.set_nsid(n, id.clone());
                }
                debug!(container = %id.short(), name = %c.name, api_calls = self.calls.total(), "container inspected");
                self.state.set_container(c);
            }
            Ok(None) => {
                self.state.remove_container(&id);
            }
            Err(e) => {
                warn!(container = %id.short(), error = %e, "cannot inspect a container");
                self.lost(&e.to_string());
            }
        }
        let now = Instant::now();
        for port in waiting {
            if self.state.port(port).is_some() && self.state.container(&id).is_none() {
                self.state.set_unowned(port, now);
            }
        }
        self.publish();
        self.fetch_missing_endpoints();
    }

    fn on_resolved(&mut self, port: BridgePort, asked: Instant, r: Resolution) {
        self.resolving.remove(&port);
        // A port the kernel said went away meanwhile: its namespace may be gone and its
        // id another namespace's by now.
        let r = match r {
            Resolution::Container(f, ..) | Resolution::NoContainer(f)
                if self.gone_links.contains(&port.0)
                    || self.state.port(port).is_some_and(|k| *k != f) =>
            {
                Resolution::NoPort
            }
            r => r,
        };
        match r {
            Resolution::Failed => return,
            Resolution::NoPort => self.state.set_unowned(port, asked),
            Resolution::NoContainer(facts) => {
                self.state.set_port(port, facts);
                self.state.set_unowned(port, asked);
            }
            Resolution::Container(facts, id, addrs) => {
                self.state.set_nsid(facts.nsid, id.clone());
                let provisional = self.state.container(&id).is_none()
                    && self.state.set_provisional(&id, &facts.bridge, &addrs);
                if provisional {
                    // Named by its create event; Docker's inspect confirms it later.
                    debug!(container = %id.short(), "container known from its create event");
                    self.inspect(id.clone());
                }
                self.state.set_port(port, facts);
                if self.state.container(&id).is_none() {
                    // Known to the kernel, not yet to us: Docker names it.
                    self.waiting.entry(id.clone()).or_default().push(port);
                    self.inspect(id.clone());
                    if !self.inspecting.contains(&id) {
                        // Docker is away: nobody can name it.
                        self.waiting.remove(&id);
                        self.state.set_unowned(port, asked);
                    }
                }
            }
        }
        self.publish();
        self.fetch_missing_endpoints();
    }

    /// Ports whose container is known but whose endpoint Docker lists only on the
    /// network itself (a Swarm container on `docker_gwbridge`): one network inspect.
    fn fetch_missing_endpoints(&mut self) {
        let Some(docker) = self.docker.clone() else {
            return;
        };
        for (network, container) in self.state.networks_missing_endpoints() {
            // Once per container and network: an endpoint the network does not list
            // either is not worth asking about again.
            if !self.tried.insert((network.clone(), container))
                || !self.fetching.insert(network.clone())
            {
                continue;
            }
            let (docker, calls) = (docker.clone(), self.calls.clone());
            self.jobs.spawn(async move {
                calls.count(&calls.inspect_network, "inspect_network");
                let r = docker
                    .inspect_network(
                        &network,
                        None::<bollard::query_parameters::InspectNetworkOptions>,
                    )
                    .await;
                Done::Endpoints(network, r.map(|n| convert::network_endpoints(&n)))
            });
        }
    }
}

/// Docker's containers and networks, the kernel's ports, and the container of every
/// port's peer namespace.
async fn list(
    docker: &Docker,
    kernel: Option<&PortReader>,
    calls: &ApiCalls,
) -> Result<Listing, bollard::errors::Error> {
    calls.count(&calls.list_containers, "list_containers");
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default().all(false).build(),
        ))
        .await?;
    calls.count(&calls.list_networks, "list_networks");
    let networks = docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await?;
    let (mut ports, mut nsids) = (None, HashMap::new());
    if let Some(k) = kernel {
        match k.ports().await {
            Ok(map) => {
                let facts: HashMap<BridgePort, PortFacts> = map
                    .ports()
                    .iter()
                    .map(|p| {
                        (
                            p.index,
                            PortFacts {
                                bridge: p.bridge.clone(),
                                nsid: p.peer_nsid,
                                peer: p.peer_index,
                            },
                        )
                    })
                    .collect();
                let wanted: HashSet<i32> = facts.values().map(|f| f.nsid).collect();
                nsids = containers_of_nsids(k, &wanted).await;
                ports = Some(facts);
            }
            Err(e) => {
                warn!(error = %crate::errors::error_chain(&e), "cannot read bridge ports; containers cannot be identified")
            }
        }
    }
    Ok(Listing {
        containers: containers
            .iter()
            .filter_map(convert::from_summary)
            .collect(),
        networks: convert::bridges(&networks),
        ports,
        nsids,
    })
}

/// The kernel's answer for one port: its bridge and peer namespace, and the container
/// whose processes live there. A namespace id the task already ties to a container is
/// checked through that container's process; otherwise the processes are searched.
/// The port is read again at the end: if it still exists with the same peer, that
/// namespace lived throughout, so its id was never another namespace's meanwhile.
async fn resolve_port(
    kernel: &PortReader,
    port: BridgePort,
    known_port: Option<PortFacts>,
    known: Option<(ContainerId, i64)>,
    from: IpAddr,
) -> Resolution {
    let asked = Instant::now();
    // The kernel's notifications usually told of the port already; asking for it only
    // when they have not (a request for a link waits on the lock that containers'
    // network set-up holds).
    let facts = match known_port {
        Some(f) => f,
        None => match kernel.port(port).await {
            Ok(Some(p)) => PortFacts {
                bridge: p.bridge,
                nsid: p.peer_nsid,
                peer: p.peer_index,
            },
            Ok(None) => return Resolution::NoPort,
            Err(e) => {
                warn!(error = %crate::errors::error_chain(&e), "cannot read a bridge port");
                return Resolution::Failed;
            }
        },
    };
    let t0 = Instant::now();
    let mut found = None;
    if let Some((id, pid)) = known {
        if kernel.nsid_of(pid, &id.0).await == Some(facts.nsid) {
            found = Some(id);
        }
    }
    let by_pid = found.is_some();
    if found.is_none() {
        found = containers_of_nsids(kernel, &HashSet::from([facts.nsid]))
            .await
            .remove(&facts.nsid);
    }
    debug!(
        port = port.0,
        by_pid,
        found = found.is_some(),
        link_us = (t0 - asked).as_micros() as u64,
        elapsed_us = t0.elapsed().as_micros() as u64,
        "port looked into"
    );
    match found {
        // The port is the container's whatever the address says; until Docker's
        // inspect gives the address it assigned, the container is held to the one its
        // request came from (reading its namespace's own addresses instead waits on the
        // lock that other containers' network set-up holds).
        Some(id) => Resolution::Container(facts, id, vec![from]),
        None => Resolution::NoContainer(facts),
    }
}

/// Which container's processes live in each namespace of `wanted` (by the id the host
/// gives it). Processes are looked at newest first, since a namespace being asked
/// about usually belongs to a container that just started: each one's namespace is read
/// (one `readlink`), each namespace not seen yet is asked for its id (one request),
/// until every wanted namespace is found; a container's first request then costs a few
/// look-ups, however many processes the host runs.
async fn containers_of_nsids(
    kernel: &PortReader,
    wanted: &HashSet<i32>,
) -> HashMap<i32, ContainerId> {
    let mut found = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let own = crate::netns::netns_inode(std::process::id() as i64);
    let mut seen: HashMap<u64, Option<i32>> = HashMap::new();
    for pid in crate::netns::pids_newest_first() {
        if found.len() == wanted.len() {
            break;
        }
        let Some(inode) = crate::netns::netns_inode(pid) else {
            continue;
        };
        if Some(inode) == own {
            continue;
        }
        let nsid = match seen.get(&inode) {
            Some(n) => *n,
            None => {
                let n = match crate::netns::open_netns_of(pid, inode) {
                    Some(ns) => kernel.nsid_of_netns(&ns).await,
                    None => None,
                };
                seen.insert(inode, n);
                n
            }
        };
        let Some(nsid) = nsid.filter(|n| wanted.contains(n) && !found.contains_key(n)) else {
            continue;
        };
        // A process of no container in that namespace names no one; another may.
        if let Some(id) = crate::netns::container_of_process(pid, inode) {
            found.insert(nsid, ContainerId(id));
        }
    }
    found
}
