//! The ordered start-up. The order is the safety argument, so it is written once, in
//! [`start`], over the [`Steps`] it takes:
//!
//! 1. the tables, closed: containers are refused from here on;
//! 2. the daemon's link and the proxy's listeners (and DNS);
//! 3. where answers come from (a real service, or the emulator);
//! 4. connections that predate the rules cut;
//! 5. drift and Docker watched, the proxy serving;
//! 6. only then the tables opened (DNAT to the proxy).
//!
//! Any failure stops the sequence before the tables open: the host stays closed.

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::egress::{log_macvlan_guard, Parents};
use super::emulate::load_emulator;
use super::running::{Command, Running};
use super::{current_snapshot, AppError};
use crate::addrs::IMDS_V4;
use crate::config::Config;
use crate::emulator::{Emulator, EmulatorConfig};
use crate::firewall::conntrack;
use crate::firewall::nft::NetlinkFirewall;
use crate::firewall::plan::{Ipv6Service, Mode};
use crate::firewall::{watch as drift, Firewall};
use crate::link;
use crate::policy::select::Policies;
use crate::proxy::{self, Proxy, ProxySettings};
use crate::reconcile::{Event, Reconciler};

/// How long `run` looks for a real metadata service before serving the emulator.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// The steps of start-up, in the order [`start`] takes them.
pub(super) trait Steps {
    /// Installs the tables closed.
    async fn close(&mut self) -> Result<(), AppError>;
    /// The daemon's link, its addresses and the proxy's listeners.
    async fn listen(&mut self) -> Result<(), AppError>;
    /// A real service, or the emulator.
    async fn choose_backend(&mut self) -> Result<(), AppError>;
    /// Cuts container connections to the metadata address that predate the rules.
    async fn cut_stale_flows(&mut self) -> Result<(), AppError>;
    /// Watches for drift and Docker's networks; the proxy starts serving.
    async fn serve(&mut self) -> Result<(), AppError>;
    /// Opens the tables: container traffic goes to the proxy.
    async fn open(&mut self) -> Result<(), AppError>;
}

/// Takes the steps in order; the first failure ends it with the tables never opened.
pub(super) async fn start(steps: &mut impl Steps) -> Result<(), AppError> {
    steps.close().await?;
    steps.listen().await?;
    steps.choose_backend().await?;
    steps.cut_stale_flows().await?;
    steps.serve().await?;
    steps.open().await
}

/// Where answers come from, decided at start.
enum AnswerSource {
    Upstream(http::Uri),
    /// The file to serve (`None`: the built-in example).
    Emulator(Option<std::path::PathBuf>),
}

/// Start-up on the real kernel: what each step made, for the next ones and for
/// [`Running`].
pub(super) struct Kernel<'a> {
    cfg: &'a Config,
    firewall: Arc<dyn Firewall>,
    parents: Parents,
    handle: rtnetlink::Handle,
    commands: mpsc::UnboundedSender<Command>,
    rec: Option<Reconciler>,
    listen6: Option<SocketAddrV6>,
    link_index: u32,
    listeners: Vec<TcpListener>,
    dns_sockets: Vec<UdpSocket>,
    backend: Option<proxy::Backend>,
    emulator: Option<(
        watch::Sender<Arc<EmulatorConfig>>,
        Option<std::path::PathBuf>,
    )>,
    serving: Option<(
        oneshot::Sender<()>,
        tokio::task::JoinHandle<proxy::DrainReport>,
    )>,
    policies_tx: Option<watch::Sender<Arc<Policies>>>,
    readiness: Arc<super::manage::Readiness>,
}

impl<'a> Kernel<'a> {
    /// Opens the firewall and rtnetlink, and subscribes to link notifications (before
    /// anything is listed, so a bridge created in between is not missed): they become
    /// `commands`.
    pub fn new(
        cfg: &'a Config,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Result<Self, AppError> {
        let netlink = NetlinkFirewall::open(cfg.table_owner)?;
        log_protection(cfg, &netlink)?;
        let parents = Parents::of(cfg, netlink.egress());
        let handle = link::connect()?;
        let (link_tx, mut link_rx) = mpsc::unbounded_channel();
        link::watch_links(link_tx)?;
        let forward = commands.clone();
        tokio::spawn(async move {
            while let Some(e) = link_rx.recv().await {
                if forward.send(Command::from(e)).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            cfg,
            firewall: Arc::new(netlink),
            parents,
            handle,
            commands,
            rec: None,
            listen6: None,
            link_index: 0,
            listeners: Vec::new(),
            dns_sockets: Vec::new(),
            backend: None,
            emulator: None,
            serving: None,
            policies_tx: None,
            readiness: Arc::default(),
        })
    }

    /// What the running loop holds, once [`start`] has taken every step.
    pub fn running(self) -> Running {
        let (stop_proxy, server) = self.serving.expect("started");
        Running {
            rec: self.rec.expect("started"),
            handle: self.handle,
            stop_proxy,
            server,
            listen6: self.listen6,
            parents: self.parents,
            policies_tx: self.policies_tx.expect("started"),
            emulator_tx: self.emulator,
            readiness: self.readiness,
        }
    }

    fn rec(&mut self) -> &mut Reconciler {
        self.rec.as_mut().expect("closed first")
    }

    /// The proxy's settings from the configuration.
    fn proxy_settings(&mut self, inventory: crate::docker::InventoryHandle) -> ProxySettings {
        let cfg = self.cfg;
        let (policies_tx, policies) = watch::channel(Arc::new(cfg.policies.clone()));
        self.policies_tx = Some(policies_tx);
        ProxySettings {
            backend: self.backend.take().expect("backend chosen"),
            request_timeout: cfg.request_timeout,
            aws_request_timeout: cfg.aws_request_timeout,
            upstream_limits: cfg.upstream_limits.clone(),
            cache: cfg.cache.clone(),
            max_body_bytes: cfg.max_body_bytes,
            max_header_bytes: cfg.max_header_bytes,
            inventory: Some(inventory),
            identify_wait: cfg.identify_wait,
            origins: Arc::new(proxy::identify::ConntrackOrigins),
            policies,
            assume: assume_settings(cfg),
            audit_summary: cfg.audit_summary,
        }
    }
}

/// The proxy's settings for assumed roles, from the configuration.
fn assume_settings(cfg: &Config) -> proxy::AssumeSettings {
    let a = &cfg.aws_roles;
    proxy::AssumeSettings {
        aws: crate::assume::spec::AwsSettings {
            base_role_arn: a.base_role_arn.clone(),
            duration: a.session,
            session_tags: a.session_tags,
            source_identity: a.source_identity,
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        },
        sts_endpoint: a.sts_endpoint.clone(),
        gce_iam_url: Some(cfg.gce_iam_credentials_url.clone()),
    }
}

impl Steps for Kernel<'_> {
    async fn close(&mut self) -> Result<(), AppError> {
        let snapshot =
            current_snapshot(self.cfg, &self.handle, Mode::Closed, &self.parents).await?;
        let mut rec = Reconciler::new(self.firewall.clone(), snapshot);
        // Replaces any stale table, refuses containers from now on.
        rec.apply().await?;
        log_macvlan_guard(self.cfg, &self.parents, &rec.snapshot().egress_guards);
        info!(table = crate::firewall::plan::TABLE, bridges = ?rec.snapshot().bridges, "interception closed");
        self.listen6 = match rec.snapshot().v6 {
            Ipv6Service::Listen(a) => Some(a),
            Ipv6Service::RefuseOnly => {
                warn!("IPv6 is switched off on this host (net.ipv6.conf.all.disable_ipv6): serving IPv4 only; containers stay refused over IPv6 until a restart with IPv6 on");
                None
            }
            Ipv6Service::Absent => {
                info!("this kernel has no IPv6: serving IPv4 only");
                None
            }
        };
        self.rec = Some(rec);
        Ok(())
    }

    async fn listen(&mut self) -> Result<(), AppError> {
        let cfg = self.cfg;
        let addr6 = self.listen6.map(|a| *a.ip());
        let (index, kind) =
            link::ensure_own_link(&self.handle, &cfg.link_name, *cfg.listen.ip(), addr6).await?;
        info!(link = %cfg.link_name, index, kind, address = %cfg.listen.ip(), address6 = ?addr6, "own link ready");
        self.link_index = index;
        for addr in [Some(cfg.listen.into()), self.listen6.map(Into::into)]
            .into_iter()
            .flatten()
        {
            self.listeners.push(bind(addr).await?);
            info!(listen = %addr, "proxy listening");
        }
        if cfg.gce_dns {
            let ips = [Some(IpAddr::V4(*cfg.listen.ip())), addr6.map(IpAddr::V6)];
            for ip in ips.into_iter().flatten() {
                let addr = SocketAddr::new(ip, crate::dns::PORT);
                let socket = UdpSocket::bind(addr)
                    .await
                    .map_err(|e| AppError::Listen(addr, e))?;
                self.dns_sockets.push(socket);
                info!(listen = %addr, "answering DNS for metadata.google.internal");
            }
        }
        Ok(())
    }

    async fn choose_backend(&mut self) -> Result<(), AppError> {
        let (cfg, handle) = (self.cfg, &self.handle);
        let backend = match choose_source(cfg, handle).await? {
            AnswerSource::Upstream(u) => {
                // Never hold the real service's address while one is upstream: the host
                // would lose it.
                link::remove_own_address(handle, &cfg.link_name, IMDS_V4).await?;
                proxy::Backend::Upstream(u)
            }
            AnswerSource::Emulator(file) => {
                let (tx, rx) = watch::channel(Arc::new(load_emulator(file.as_deref())?));
                // Host processes reach the emulator at the usual address too.
                link::add_own_address(handle, &cfg.link_name, self.link_index, IMDS_V4).await?;
                self.listeners
                    .push(bind(SocketAddrV4::new(IMDS_V4, 80).into()).await?);
                let shown = file.as_ref().map(|f| f.display().to_string());
                info!(
                    file = %shown.unwrap_or_else(|| "built-in example".into()),
                    host_address = %IMDS_V4,
                    "serving the emulator"
                );
                self.emulator = Some((tx, file));
                proxy::Backend::Emulator(Arc::new(Emulator::new(rx)))
            }
        };
        self.backend = Some(backend);
        Ok(())
    }

    async fn cut_stale_flows(&mut self) -> Result<(), AppError> {
        let v6 = self.rec().snapshot().v6;
        let cut = conntrack::cut_stale_container_flows(*self.cfg.listen.ip(), v6)
            .map_err(AppError::Conntrack)?;
        if cut > 0 {
            info!(
                connections = cut,
                "cut pre-existing container connections to the metadata address"
            );
        }
        Ok(())
    }

    async fn serve(&mut self) -> Result<(), AppError> {
        // Other people's changes are watched before the tables open.
        if let Some(portid) = self.firewall.writer_portid() {
            let commands = self.commands.clone();
            drift::spawn(portid, move |c| {
                let _ = commands.send(Command::Reconcile(Event::Drift(c)));
            })
            .map_err(AppError::Watch)?;
        }
        // Docker's networks name the bridges to intercept, whatever they are called.
        let inventory = crate::docker::spawn(self.cfg.docker_socket.clone());
        let bridges = inventory.bridges.clone();
        tokio::spawn(forward_docker_bridges(bridges, self.commands.clone()));
        let settings = self.proxy_settings(inventory.clone());
        let source = match &settings.backend {
            proxy::Backend::Upstream(u) => format!("upstream {u}"),
            proxy::Backend::Emulator(_) => match &self.emulator {
                Some((_, Some(file))) => format!("emulator {}", file.display()),
                _ => "emulator (built-in example)".to_owned(),
            },
        };
        let policies = settings.policies.clone();
        let proxy = Arc::new(Proxy::new(settings));
        let (stop_proxy, stopped) = oneshot::channel::<()>();
        let listeners = std::mem::take(&mut self.listeners);
        let listen: Vec<String> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        let dns = std::mem::take(&mut self.dns_sockets);
        let drain = self.cfg.drain_timeout;
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = gone.clone();
        let serving = proxy.clone();
        let server = tokio::spawn(async move {
            let report = serve_all(listeners, dns, serving, stopped, drain).await;
            ended.store(true, std::sync::atomic::Ordering::Relaxed);
            report
        });
        let manage = super::manage::Manage {
            readiness: self.readiness.clone(),
            inventory: inventory.clone(),
            proxy_gone: Arc::new(move || gone.load(std::sync::atomic::Ordering::Relaxed)),
            proxy: Arc::downgrade(&proxy),
        };
        super::manage::spawn_probe(
            SocketAddr::from(self.cfg.listen),
            proxy.probe_key().to_owned(),
            self.readiness.clone(),
        );
        if let Some(addr) = self.cfg.metrics_listen {
            super::manage::spawn(addr, manage.clone()).await;
        }
        super::status::spawn(super::status::Source {
            source,
            listen,
            readiness: self.readiness.clone(),
            not_ready: Arc::new(move || manage.not_ready()),
            inventory,
            policies,
            proxy: Arc::downgrade(&proxy),
        });
        self.serving = Some((stop_proxy, server));
        Ok(())
    }

    async fn open(&mut self) -> Result<(), AppError> {
        self.rec().handle(vec![Event::SetMode(Mode::Open)]).await?;
        Ok(())
    }
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

/// `--upstream`, `--emulator`, or, with neither, a real service if one answers at
/// 169.254.169.254 in time and the built-in example if none does.
async fn choose_source(cfg: &Config, handle: &rtnetlink::Handle) -> Result<AnswerSource, AppError> {
    if let Some(u) = &cfg.upstream {
        return Ok(AnswerSource::Upstream(u.clone()));
    }
    if let Some(f) = &cfg.emulator {
        return Ok(AnswerSource::Emulator(Some(f.clone())));
    }
    // An earlier emulator run may have left the address on our link: the probe must
    // not find ourselves.
    link::remove_own_address(handle, &cfg.link_name, IMDS_V4).await?;
    let addr = SocketAddr::from((IMDS_V4, 80));
    match crate::probe::find(addr, PROBE_TIMEOUT).await {
        Ok(cloud) => {
            info!(
                %cloud,
                upstream = "http://169.254.169.254",
                "a metadata service answers: forwarding to it"
            );
            Ok(AnswerSource::Upstream(http::Uri::from_static(
                "http://169.254.169.254",
            )))
        }
        Err(nothing) => {
            let found = match nothing {
                crate::probe::NoService::Silent => {
                    format!("nothing answered within {} ms", PROBE_TIMEOUT.as_millis())
                }
                crate::probe::NoService::NotMetadata(status) => {
                    format!("an HTTP server answered ({status}) without any cloud's metadata marks")
                }
            };
            info!(
                at = "169.254.169.254",
                found,
                "no metadata service: serving the built-in emulator (examples/emulator.toml; choose a file with --emulator, or a service with --upstream)"
            );
            Ok(AnswerSource::Emulator(None))
        }
    }
}

/// Hands every change of Docker's bridges to the running loop.
async fn forward_docker_bridges(
    mut bridges: watch::Receiver<std::collections::BTreeSet<String>>,
    commands: mpsc::UnboundedSender<Command>,
) {
    loop {
        let now = bridges.borrow_and_update().clone();
        let sent = commands.send(Command::Reconcile(Event::DockerBridges(now)));
        if sent.is_err() || bridges.changed().await.is_err() {
            return;
        }
    }
}

/// Serves every listener (IPv4, and IPv6 where the host has it) with the same proxy,
/// and answers DNS on every DNS socket, until `stopped`; then drains the proxy.
async fn serve_all(
    listeners: Vec<TcpListener>,
    dns_sockets: Vec<UdpSocket>,
    proxy: Arc<Proxy>,
    stopped: oneshot::Receiver<()>,
    drain: std::time::Duration,
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| AppError::Listen(addr, e))?;
    // A restart must not wait for the previous process's sockets in TIME_WAIT.
    socket
        .set_reuseaddr(true)
        .map_err(|e| AppError::Listen(addr, e))?;
    let in_use = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::AddrInUse => AppError::ListenInUse(addr, e),
        _ => AppError::Listen(addr, e),
    };
    socket.bind(addr).map_err(in_use)?;
    socket.listen(1024).map_err(in_use)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the steps taken; fails the one named.
    struct Recorder {
        fail: Option<&'static str>,
        taken: Vec<&'static str>,
    }

    impl Recorder {
        fn step(&mut self, name: &'static str) -> Result<(), AppError> {
            self.taken.push(name);
            match self.fail == Some(name) {
                true => Err(AppError::NotRoot),
                false => Ok(()),
            }
        }
    }

    impl Steps for Recorder {
        async fn close(&mut self) -> Result<(), AppError> {
            self.step("close")
        }
        async fn listen(&mut self) -> Result<(), AppError> {
            self.step("listen")
        }
        async fn choose_backend(&mut self) -> Result<(), AppError> {
            self.step("backend")
        }
        async fn cut_stale_flows(&mut self) -> Result<(), AppError> {
            self.step("cut")
        }
        async fn serve(&mut self) -> Result<(), AppError> {
            self.step("serve")
        }
        async fn open(&mut self) -> Result<(), AppError> {
            self.step("open")
        }
    }

    const ORDER: [&str; 6] = ["close", "listen", "backend", "cut", "serve", "open"];

    #[tokio::test]
    async fn the_tables_close_first_and_open_last() {
        let mut r = Recorder {
            fail: None,
            taken: vec![],
        };
        start(&mut r).await.unwrap();
        assert_eq!(r.taken, ORDER);
    }

    #[tokio::test]
    async fn a_failed_step_ends_start_up_with_the_tables_never_opened() {
        for (i, failing) in ORDER.iter().enumerate() {
            let mut r = Recorder {
                fail: Some(failing),
                taken: vec![],
            };
            assert!(start(&mut r).await.is_err(), "{failing} failed");
            assert_eq!(r.taken, ORDER[..=i], "{failing} failed");
            if *failing != "open" {
                assert!(!r.taken.contains(&"open"), "{failing} failed");
            }
        }
    }
}
