//! Wiring and the ordered life of the daemon.
//!
//! Start-up: table first (closed: containers are refused), then the daemon's link and
//! the proxy's listener, stale connections cut, and only then the DNAT rule. Shutdown:
//! closed again first (new connections are refused), then in-flight requests drain.
//! The table outlives the process, so a crash leaves the closed-or-refusing state too.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::firewall::conntrack;
use crate::firewall::nft::NetlinkFirewall;
use crate::firewall::plan::{plan, EgressGuard, Mode, Snapshot, V6};
use crate::firewall::{watch, Firewall, FirewallError};
use crate::link::{self, LinkError, LinkEvent};
use crate::proxy::{self, Proxy, ProxySettings};
use crate::reconcile::{Event, Reconciler};

/// How often the table's existence is verified, on top of change notifications.
const VERIFY_EVERY: Duration = Duration::from_millis(500);
/// How often the config file is checked for changes.
const CONFIG_POLL_EVERY: Duration = Duration::from_secs(1);
/// How often the link list is re-read, on top of link notifications.
const RELIST_LINKS_EVERY: Duration = Duration::from_secs(30);

/// Errors that end the daemon.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("imds-proxy must run as root (it changes nftables and network links)")]
    NotRoot,
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the listen address {0} is already in use by another program")]
    ListenInUse(std::net::SocketAddr, #[source] std::io::Error),
    #[error("failed to listen on {0}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
    #[error("failed to watch for nftables changes")]
    Watch(#[source] std::io::Error),
    #[error("failed to install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("another imds-proxy is already running in this network namespace")]
    AlreadyRunning,
    #[error("imds-proxy is running in this network namespace; stop it first (or run it with --remove-on-exit)")]
    UninstallWhileRunning,
    #[error("failed to take the single-instance lock")]
    Lock(#[source] std::io::Error),
    #[error("failed to cut pre-existing connections to the metadata address")]
    Conntrack(#[source] std::io::Error),
    #[error(transparent)]
    Emulator(#[from] crate::emulator::EmulatorConfigError),
    #[error("failed to listen on {0}")]
    EmulateListen(std::net::SocketAddr, #[source] std::io::Error),
}

/// How long `run` looks for a real metadata service before serving the emulator.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Where answers come from, decided at start.
enum Source {
    Upstream(http::Uri),
    /// The file to serve (`None`: the built-in example).
    Emulator(Option<std::path::PathBuf>),
}

/// `--upstream`, `--emulator`, or, with neither, a real service if one answers at
/// 169.254.169.254 in time and the built-in example if none does.
async fn choose_source(cfg: &Config, handle: &rtnetlink::Handle) -> Result<Source, AppError> {
    if let Some(u) = &cfg.upstream {
        return Ok(Source::Upstream(u.clone()));
    }
    if let Some(f) = &cfg.emulator {
        return Ok(Source::Emulator(Some(f.clone())));
    }
    // An earlier emulator run may have left the address on our link: the probe must
    // not find ourselves.
    link::remove_own_address(handle, &cfg.link_name, crate::firewall::plan::IMDS_V4).await?;
    let addr = std::net::SocketAddr::from((crate::firewall::plan::IMDS_V4, 80));
    match crate::probe::find(addr, PROBE_TIMEOUT).await {
        Ok(cloud) => {
            info!(
                %cloud,
                upstream = "http://169.254.169.254",
                "a metadata service answers: forwarding to it"
            );
            Ok(Source::Upstream(http::Uri::from_static(
                "http://169.254.169.254",
            )))
        }
        Err(nothing) => {
            let found = match nothing {
                crate::probe::Nothing::Silent => {
                    format!("nothing answered within {} ms", PROBE_TIMEOUT.as_millis())
                }
                crate::probe::Nothing::NotMetadata(status) => {
                    format!("an HTTP server answered ({status}) without any cloud's metadata marks")
                }
            };
            info!(
                at = "169.254.169.254",
                found,
                "no metadata service: serving the built-in emulator (examples/emulator.toml; choose a file with --emulator, or a service with --upstream)"
            );
            Ok(Source::Emulator(None))
        }
    }
}

/// The emulator's file, validated, and a channel that carries its replacements.
fn load_emulator(
    file: Option<&std::path::Path>,
) -> Result<crate::emulator::EmulatorConfig, AppError> {
    Ok(match file {
        Some(f) => crate::emulator::EmulatorConfig::load(f)?,
        None => crate::emulator::EmulatorConfig::example(),
    })
}

/// `imds-proxy emulate`: the emulator on a plain address, with every provider's checks
/// and no interception; every caller counts as the host (policy `allow`).
pub async fn emulate(
    file: Option<std::path::PathBuf>,
    listen: std::net::SocketAddr,
) -> Result<(), AppError> {
    let cfg = load_emulator(file.as_deref())?;
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(cfg));
    let emulator = Arc::new(crate::emulator::Emulator::new(rx));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| AppError::EmulateListen(listen, e))?;
    let policies = crate::policy::select::Policies::builtin("allow", "allow");
    let proxy = Arc::new(Proxy::new(ProxySettings {
        backend: proxy::Backend::Emulator(emulator),
        request_timeout: Duration::from_secs(10),
        aws_request_timeout: crate::config::DEFAULT_AWS_TIMEOUT,
        upstream_limits: Default::default(),
        cache: Default::default(),
        max_body_bytes: 65536,
        max_header_bytes: 16384,
        inventory: None,
        identify_wait: Duration::ZERO,
        origins: Arc::new(proxy::identify::EveryoneIsHost),
        policies: tokio::sync::watch::channel(Arc::new(policies)).1,
    }));
    let mut signals = Signals::install()?;
    info!(%listen, file = %file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "built-in example".into()), "emulator serving");
    let reload_from = file.clone();
    let stop = async move {
        let mut stamp = reload_from.as_deref().and_then(file_stamp);
        let mut tick = tokio::time::interval(CONFIG_POLL_EVERY);
        loop {
            tokio::select! {
                _ = signals.term.recv() => return,
                _ = signals.int.recv() => return,
                _ = signals.hup.recv() => reload_emulator(&tx, reload_from.as_deref(), "SIGHUP"),
                _ = tick.tick() => {
                    let now = reload_from.as_deref().and_then(file_stamp);
                    if now != stamp {
                        stamp = now;
                        reload_emulator(&tx, reload_from.as_deref(), "emulator file changed");
                    }
                }
            }
        }
    };
    proxy::serve(listener, proxy, stop, Duration::from_secs(5)).await;
    Ok(())
}

/// Re-reads the emulator file; an invalid edit is refused with every reason and the
/// previous file keeps serving.
fn reload_emulator(
    tx: &tokio::sync::watch::Sender<Arc<crate::emulator::EmulatorConfig>>,
    file: Option<&std::path::Path>,
    trigger: &str,
) {
    let Some(file) = file else { return };
    match crate::emulator::EmulatorConfig::load(file) {
        Ok(new) => {
            let changed = tx.send_if_modified(|cur| {
                if **cur == new {
                    false
                } else {
                    *cur = Arc::new(new.clone());
                    true
                }
            });
            info!(trigger, changed, "emulator file reloaded");
        }
        Err(e) => {
            warn!(trigger, error = %crate::errors::error_chain(&e), "emulator file reload refused; the previous file keeps serving")
        }
    }
}

/// A file's modification time and size, to notice edits.
fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn require_root() -> Result<(), AppError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(AppError::NotRoot)
    }
}

/// Directory of the per-namespace instance locks; root-only, so no other user can
/// take a lock and keep the daemon from starting.
const LOCK_DIR: &str = "/run/imds-proxy";

/// An exclusive lock held for the life of the process, one per network namespace (the
/// file is named after the namespace's inode). The kernel drops it when the process
/// ends, even on SIGKILL, so a crash never leaves a stale lock; a second instance in
/// the same namespace is refused before it touches anything.
fn single_instance() -> Result<nix::fcntl::Flock<std::fs::File>, AppError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map_err(AppError::Lock)?
        .ino();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(LOCK_DIR)
        .map_err(AppError::Lock)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(format!("{LOCK_DIR}/netns-{netns}.lock"))
        .map_err(AppError::Lock)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => AppError::AlreadyRunning,
            e => AppError::Lock(e.into()),
        },
    )
}

/// The snapshot for the links present now.
pub async fn current_snapshot(
    cfg: &Config,
    handle: &rtnetlink::Handle,
    mode: Mode,
    parents: &Parents,
) -> Result<Snapshot, LinkError> {
    let links = link::list_links(handle).await?;
    let egress_guards = egress_guards(parents, handle).await?;
    Ok(Snapshot {
        bridges: Snapshot::bridges_among(&cfg.bridges, links.values().map(String::as_str)),
        patterns: cfg.bridges.clone(),
        direct: cfg.direct_interfaces.clone(),
        egress_guards,
        listen: cfg.listen,
        v6: link::ipv6_plan(cfg.listen6),
        gce_dns: cfg.gce_dns,
        mode,
    })
}

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
async fn egress_guards(
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
async fn egress_event(
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
fn log_macvlan_guard(cfg: &Config, parents: &Parents, guards: &[EgressGuard]) {
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

/// `imds-proxy rules`: the ruleset `run` would install now.
pub async fn rules(cfg: &Config) -> Result<String, AppError> {
    let handle = link::connect()?;
    let parents = Parents::of(cfg, true);
    Ok(plan(&current_snapshot(cfg, &handle, Mode::Open, &parents).await?).to_string())
}

/// `imds-proxy uninstall`: removes the table and the link, reopening direct access.
pub async fn uninstall(cfg: &Config) -> Result<(), AppError> {
    require_root()?;
    // Never pull the table from under a running daemon: it would put the table back
    // while its address is gone.
    let _instance = single_instance().map_err(|e| match e {
        AppError::AlreadyRunning => AppError::UninstallWhileRunning,
        e => e,
    })?;
    // Plain writes: deleting needs no ownership (a stopped daemon's tables have none).
    let fw = NetlinkFirewall::open(crate::firewall::TableOwner::Off)?;
    remove_interception(cfg, Arc::new(fw)).await
}

/// Removes table and link, keeping on after a failure and reporting both. `fw` must be
/// the running daemon's own writer where there is one: owned tables refuse any other.
async fn remove_interception(cfg: &Config, fw: Arc<dyn Firewall>) -> Result<(), AppError> {
    let table = tokio::task::spawn_blocking(move || fw.remove())
        .await
        .map_err(|_| FirewallError::WorkerGone)?;
    let handle = link::connect()?;
    let link = link::remove_own_link(&handle, &cfg.link_name).await;
    // Keep going after the first failure and report both.
    match (&table, &link) {
        (Ok(t), Ok(l)) => {
            info!(
                table_removed = t,
                link_removed = l,
                "uninstalled; containers reach the metadata address directly again"
            );
            Ok(())
        }
        _ => {
            if let Err(e) = &link {
                warn!(error = %crate::errors::error_chain(e), "failed to remove the link");
            }
            table?;
            link?;
            Ok(())
        }
    }
}

/// `imds-proxy run`.
/// Re-reads the configuration (file, variables, flags) for a reload.
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

pub async fn run(cfg: Config, reload: Reload) -> Result<(), AppError> {
    let started = Instant::now();
    require_root()?;
    let _instance = single_instance()?;
    // Signals are caught from the first moment: a SIGTERM during start-up still ends in
    // the closed state rather than killing the process half-way.
    let mut signals = Signals::install()?;
    raise_fd_limit();
    let mut live = start_up(&cfg).await?;
    info!(
        listen = %cfg.listen,
        listen6 = %live.listen6.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        upstream = %cfg.upstream.as_ref().map(ToString::to_string).unwrap_or_default(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "interception live"
    );
    // Only now may Docker (ordered after the unit) start its containers.
    let mut notifier = crate::notify::Notifier::from_env();
    notifier.ready("interception live");
    let signal = live
        .reconcile_until_signal(&cfg, &mut signals, &reload, &mut notifier)
        .await;
    notifier.stopping();
    live.shut_down(&cfg, signal).await
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, AppError> {
        let on = |kind| tokio::signal::unix::signal(kind).map_err(AppError::Signals);
        Ok(Self {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
        })
    }
}

/// What the running daemon holds between start-up and shutdown.
struct Live {
    rec: Reconciler,
    handle: rtnetlink::Handle,
    link_rx: mpsc::UnboundedReceiver<LinkEvent>,
    ev_rx: mpsc::UnboundedReceiver<Event>,
    stop_proxy: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<proxy::DrainReport>,
    /// Where the proxy listens for IPv6 callers (`None`: the host has no usable IPv6).
    listen6: Option<std::net::SocketAddrV6>,
    /// Which interfaces the macvlan guard follows.
    parents: Parents,
    policies_tx: tokio::sync::watch::Sender<Arc<crate::policy::select::Policies>>,
    /// The emulator's file in force, and where it comes from.
    emulator_tx: Option<(
        tokio::sync::watch::Sender<Arc<crate::emulator::EmulatorConfig>>,
        Option<std::path::PathBuf>,
    )>,
}

/// Says once how the tables are protected, adopts what a previous run left, and warns
/// about interfaces opened on purpose.
fn log_protection(cfg: &Config, fw: &NetlinkFirewall) -> Result<(), AppError> {
    if fw.owned() {
        info!("tables owned by the daemon and persistent: no other process can change them while it runs, and they stay after it stops");
        let adopted = fw.adopt()?;
        if !adopted.is_empty() {
            info!(families = ?adopted, "adopted the tables a previous run left; they keep refusing until replaced");
        }
    } else {
        let why = match cfg.table_owner {
            crate::firewall::TableOwner::Off => "table_owner = off",
            crate::firewall::TableOwner::Auto => {
                "this kernel has no owned persistent tables (Linux 6.9+)"
            }
        };
        info!(
            reason = why,
            "tables not owned: restored within milliseconds if someone changes them"
        );
    }
    if !cfg.direct_interfaces.is_empty() {
        warn!(interfaces = ?cfg.direct_interfaces, "direct_interfaces: packets from these interfaces reach the metadata address directly, not through the proxy");
    }
    Ok(())
}

/// The ordered start-up; any error leaves the table closed (or absent if it never got
/// that far), never open.
async fn start_up(cfg: &Config) -> Result<Live, AppError> {
    let netlink = NetlinkFirewall::open(cfg.table_owner)?;
    log_protection(cfg, &netlink)?;
    let parents = Parents::of(cfg, netlink.egress());
    let firewall: Arc<dyn Firewall> = Arc::new(netlink);
    let handle = link::connect()?;

    // Subscribe before listing, so a bridge created in between is not missed.
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    link::watch_links(link_tx)?;
    let mut rec = Reconciler::new(
        firewall.clone(),
        current_snapshot(cfg, &handle, Mode::Closed, &parents).await?,
    );

    // 1. Closed: replaces any stale table, refuses containers from now on.
    rec.apply().await?;
    log_macvlan_guard(cfg, &parents, &rec.snapshot().egress_guards);
    info!(table = crate::firewall::plan::TABLE, bridges = ?rec.snapshot().bridges, "interception closed");

    let v6 = rec.snapshot().v6;
    let listen6 = match v6 {
        V6::Listen(a) => Some(a),
        V6::RefuseOnly => {
            warn!("IPv6 is switched off on this host (net.ipv6.conf.all.disable_ipv6): serving IPv4 only; containers stay refused over IPv6 until a restart with IPv6 on");
            None
        }
        V6::Absent => {
            info!("this kernel has no IPv6: serving IPv4 only");
            None
        }
    };

    // 2. The proxy's addresses and listeners.
    let (index, kind) = link::ensure_own_link(
        &handle,
        &cfg.link_name,
        *cfg.listen.ip(),
        listen6.map(|a| *a.ip()),
    )
    .await?;
    info!(link = %cfg.link_name, index, kind, address = %cfg.listen.ip(), address6 = ?listen6.map(|a| *a.ip()), "own link ready");
    let mut listeners = Vec::new();
    for addr in [Some(cfg.listen.into()), listen6.map(Into::into)]
        .into_iter()
        .flatten()
    {
        listeners.push(bind(addr).await?);
        info!(listen = %addr, "proxy listening");
    }
    let mut dns_sockets = Vec::new();
    if cfg.gce_dns {
        for ip in [
            Some(IpAddr::V4(*cfg.listen.ip())),
            listen6.map(|a| (*a.ip()).into()),
        ]
        .into_iter()
        .flatten()
        {
            let addr = std::net::SocketAddr::new(ip, crate::dns::PORT);
            let socket = tokio::net::UdpSocket::bind(addr)
                .await
                .map_err(|e| AppError::Listen(addr, e))?;
            dns_sockets.push(socket);
            info!(listen = %addr, "answering DNS for metadata.google.internal");
        }
    }

    let source = choose_source(cfg, &handle).await?;
    let (backend, emulator_tx) = match source {
        Source::Upstream(u) => {
            // Never hold the real service's address while one is upstream: the host
            // would lose it.
            link::remove_own_address(&handle, &cfg.link_name, crate::firewall::plan::IMDS_V4)
                .await?;
            (proxy::Backend::Upstream(u), None)
        }
        Source::Emulator(file) => {
            let emu_cfg = load_emulator(file.as_deref())?;
            let (tx, rx) = tokio::sync::watch::channel(Arc::new(emu_cfg));
            // Host processes reach the emulator at the usual address too.
            let imds = crate::firewall::plan::IMDS_V4;
            link::add_own_address(&handle, &cfg.link_name, index, imds).await?;
            listeners.push(bind(std::net::SocketAddrV4::new(imds, 80).into()).await?);
            info!(
                file = %file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "built-in example".into()),
                host_address = %imds,
                "serving the emulator"
            );
            (
                proxy::Backend::Emulator(Arc::new(crate::emulator::Emulator::new(rx))),
                Some((tx, file)),
            )
        }
    };

    // 3. Connections that predate the rules must not keep bypassing them.
    let cut =
        conntrack::cut_stale_container_flows(*cfg.listen.ip(), v6).map_err(AppError::Conntrack)?;
    if cut > 0 {
        info!(
            connections = cut,
            "cut pre-existing container connections to the metadata address"
        );
    }

    // 4. Watch for other people's changes before the table is opened.
    let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Event>();
    if let Some(portid) = firewall.writer_portid() {
        let ev_tx = ev_tx.clone();
        watch::spawn(portid, move |c| {
            let _ = ev_tx.send(Event::Drift(c));
        })
        .map_err(AppError::Watch)?;
    }
    // Docker's networks name the bridges to intercept, whatever they are called.
    let inventory = crate::docker::spawn(cfg.docker_socket.clone());
    tokio::spawn(forward_docker_bridges(inventory.bridges.clone(), ev_tx));
    let (policies_tx, policies_rx) = tokio::sync::watch::channel(Arc::new(cfg.policies.clone()));
    let proxy = Arc::new(Proxy::new(ProxySettings {
        backend,
        request_timeout: cfg.request_timeout,
        aws_request_timeout: cfg.aws_request_timeout,
        upstream_limits: cfg.upstream_limits.clone(),
        cache: cfg.cache.clone(),
        max_body_bytes: cfg.max_body_bytes,
        max_header_bytes: cfg.max_header_bytes,
        inventory: Some(inventory),
        identify_wait: cfg.identify_wait,
        origins: Arc::new(proxy::identify::ConntrackOrigins),
        policies: policies_rx,
    }));
    let (stop_proxy, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_all(
        listeners,
        dns_sockets,
        proxy,
        stopped,
        cfg.drain_timeout,
    ));

    // 5. Open.
    rec.handle(vec![Event::SetMode(Mode::Open)]).await?;
    Ok(Live {
        rec,
        handle,
        link_rx,
        ev_rx,
        stop_proxy,
        server,
        listen6,
        parents,
        policies_tx,
        emulator_tx,
    })
}

/// Hands every change of Docker's bridges to the reconciler.
async fn forward_docker_bridges(
    mut bridges: tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let now = bridges.borrow_and_update().clone();
        if events.send(Event::DockerBridges(now)).is_err() || bridges.changed().await.is_err() {
            return;
        }
    }
}

/// Serves every listener (IPv4, and IPv6 where the host has it) with the same proxy,
/// and answers DNS on every DNS socket, until `stopped`; then drains the proxy.
async fn serve_all(
    listeners: Vec<tokio::net::TcpListener>,
    dns_sockets: Vec<tokio::net::UdpSocket>,
    proxy: Arc<Proxy>,
    stopped: tokio::sync::oneshot::Receiver<()>,
    drain: Duration,
) -> proxy::DrainReport {
    use futures::FutureExt;
    let stopped = stopped.map(|_| ()).shared();
    for socket in dns_sockets {
        tokio::spawn(crate::dns::serve(socket, stopped.clone()));
    }
    let reports = futures::future::join_all(
        listeners
            .into_iter()
            .map(|l| proxy::serve(l, proxy.clone(), stopped.clone(), drain)),
    )
    .await;
    proxy::DrainReport {
        abandoned: reports.iter().map(|r| r.abandoned).sum(),
    }
}

impl Live {
    /// Feeds link, drift and timer events to the reconciler until a signal arrives.
    async fn reconcile_until_signal(
        &mut self,
        cfg: &Config,
        signals: &mut Signals,
        reload: &Reload,
        notifier: &mut crate::notify::Notifier,
    ) -> &'static str {
        let mut verify = tokio::time::interval(VERIFY_EVERY);
        let mut relist = tokio::time::interval(RELIST_LINKS_EVERY);
        let mut watch_file = tokio::time::interval(CONFIG_POLL_EVERY);
        let mut stamp = config_stamp(cfg);
        let emulator_file = self.emulator_tx.as_ref().and_then(|(_, f)| f.clone());
        let mut emulator_stamp = emulator_file.as_deref().and_then(file_stamp);
        loop {
            let first = tokio::select! {
                _ = signals.term.recv() => return "SIGTERM",
                _ = signals.int.recv() => return "SIGINT",
                _ = signals.hup.recv() => {
                    self.reload(cfg, reload, "SIGHUP");
                    if let Some((tx, f)) = &self.emulator_tx {
                        reload_emulator(tx, f.as_deref(), "SIGHUP");
                    }
                    continue;
                }
                _ = watch_file.tick() => {
                    let now = config_stamp(cfg);
                    if now != stamp {
                        stamp = now;
                        self.reload(cfg, reload, "config file changed");
                    }
                    let now = emulator_file.as_deref().and_then(file_stamp);
                    if now != emulator_stamp {
                        emulator_stamp = now;
                        if let Some((tx, f)) = &self.emulator_tx {
                            reload_emulator(tx, f.as_deref(), "emulator file changed");
                        }
                    }
                    continue;
                }
                Some(e) = self.link_rx.recv() => Event::Link(e),
                Some(e) = self.ev_rx.recv() => e,
                _ = verify.tick() => Event::Verify,
                _ = relist.tick() => Event::Link(LinkEvent::Resync),
            };
            // Take whatever else is already queued: one apply for a burst.
            let mut batch = vec![first];
            while let Ok(e) = self.link_rx.try_recv() {
                batch.push(Event::Link(e));
            }
            while let Ok(e) = self.ev_rx.try_recv() {
                batch.push(e);
            }
            let resync = batch
                .iter()
                .any(|e| matches!(e, Event::Link(LinkEvent::Resync)));
            if resync {
                batch.extend(links_event(&self.handle).await);
            }
            let egress = egress_event(&self.parents, &self.handle, &batch, resync).await;
            batch.extend(egress);
            let held = self.emulator_tx.is_some();
            guard_own_link(&self.handle, cfg, self.listen6, held, &batch, resync).await;
            let verified = batch.iter().any(|e| matches!(e, Event::Verify));
            match self.rec.handle(batch).await {
                // The tables are verified (or were just restored): the daemon is alive
                // and in charge. A loop that hangs, or tables it cannot keep, starve
                // the watchdog and systemd restarts the daemon; the tables stay closed
                // meanwhile.
                Ok(_) if verified => {
                    notifier.healthy(Instant::now());
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %crate::errors::error_chain(&e), "failed to update the nftables table; retrying on the next event")
                }
            }
        }
    }

    /// Applies a reloaded configuration's policies; a configuration that does not
    /// validate changes nothing and says why.
    fn reload(&self, running: &Config, reload: &Reload, trigger: &str) {
        match reload() {
            Ok(new) => {
                let changed = self.policies_tx.send_if_modified(|current| {
                    if **current == new.policies {
                        false
                    } else {
                        *current = Arc::new(new.policies.clone());
                        true
                    }
                });
                let mut rest = new.clone();
                rest.policies = running.policies.clone();
                if rest != *running {
                    warn!(
                        trigger,
                        "settings other than policies changed; they take effect on restart"
                    );
                }
                info!(
                    trigger,
                    policies_changed = changed,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                warn!(trigger, error = %crate::errors::error_chain(&e), "configuration reload refused; the previous configuration keeps serving")
            }
        }
    }

    /// Closed first (new container connections are refused), then the drain, then
    /// (only with --remove-on-exit) the table and link go.
    async fn shut_down(mut self, cfg: &Config, signal: &str) -> Result<(), AppError> {
        info!(
            signal,
            "shutting down: refusing new container connections, draining in-flight requests"
        );
        if let Err(e) = self.rec.handle(vec![Event::SetMode(Mode::Closed)]).await {
            warn!(error = %crate::errors::error_chain(&e), "failed to close the interception");
        }
        let _ = self.stop_proxy.send(());
        let report = self.server.await.unwrap_or_else(|e| {
            warn!(error = %e, "the proxy task failed");
            proxy::DrainReport { abandoned: 0 }
        });
        if cfg.remove_on_exit {
            return remove_interception(cfg, self.rec.firewall()).await;
        }
        info!(
            abandoned = report.abandoned,
            "stopped; containers stay refused until the daemon runs again or `imds-proxy uninstall`"
        );
        Ok(())
    }
}

/// Puts the daemon's link and address back if someone removed them or took the link
/// down: without the address, DNATed container traffic would no longer be local (the
/// forward chain refuses it meanwhile). A resync re-checks it even without an event,
/// since notifications can be lost.
async fn guard_own_link(
    handle: &rtnetlink::Handle,
    cfg: &Config,
    listen6: Option<std::net::SocketAddrV6>,
    holds_imds: bool,
    events: &[Event],
    resync: bool,
) {
    let addr6 = listen6.map(|a| *a.ip());
    let imds = crate::firewall::plan::IMDS_V4;
    let reported = events.iter().any(|e| match e {
        Event::Link(LinkEvent::Gone(name) | LinkEvent::Down(name)) => *name == cfg.link_name,
        Event::Link(LinkEvent::AddressGone(ip)) => {
            *ip == std::net::IpAddr::V4(*cfg.listen.ip())
                || addr6.map(Into::into) == Some(*ip)
                || (holds_imds && *ip == std::net::IpAddr::V4(imds))
        }
        _ => false,
    });
    let lost = reported
        || (resync
            && !link::own_link_ok(handle, &cfg.link_name, *cfg.listen.ip(), addr6)
                .await
                .unwrap_or(false));
    if !lost {
        return;
    }
    warn!(link = %cfg.link_name, address = %cfg.listen.ip(), "the proxy's link or address was removed or taken down");
    match link::ensure_own_link(handle, &cfg.link_name, *cfg.listen.ip(), addr6).await {
        Ok((index, kind)) => {
            info!(link = %cfg.link_name, index, kind, "own link restored");
            // The emulator's address for host processes comes back with it.
            if holds_imds {
                if let Err(e) = link::add_own_address(handle, &cfg.link_name, index, imds).await {
                    warn!(error = %crate::errors::error_chain(&e), address = %imds, "failed to restore the emulator's address for host processes");
                }
            }
        }
        Err(e) => {
            warn!(error = %crate::errors::error_chain(&e), "failed to restore the own link; containers stay refused")
        }
    }
}

/// The config file's modification time and size, to notice edits.
fn config_stamp(cfg: &Config) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(cfg.config_file.as_ref()?).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Lifts the soft open-files limit to the hard one: a shell's default of 1024 would cap
/// the proxy far below its own connection limits.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!(error = %e, soft, hard, "could not raise the open-files limit");
            }
        }
    }
}

async fn links_event(handle: &rtnetlink::Handle) -> Option<Event> {
    match link::list_links(handle).await {
        Ok(l) => Some(Event::Links(l.into_values().collect())),
        Err(e) => {
            warn!(error = %crate::errors::error_chain(&e), "failed to list links");
            None
        }
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, AppError> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| AppError::Listen(addr, e))?;
    // A restart must not wait for the previous process's sockets in TIME_WAIT.
    socket
        .set_reuseaddr(true)
        .map_err(|e| AppError::Listen(addr, e))?;
    socket.bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => AppError::ListenInUse(addr, e),
        _ => AppError::Listen(addr, e),
    })?;
    socket.listen(1024).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => AppError::ListenInUse(addr, e),
        _ => AppError::Listen(addr, e),
    })
}
