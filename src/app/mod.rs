//! Wiring and the ordered life of the daemon.
//!
//! Start-up: table first (closed: containers are refused), then the daemon's link and
//! the proxy's listener, stale connections cut, and only then the DNAT rule. Shutdown:
//! closed again first (new connections are refused), then in-flight requests drain.
//! The table outlives the process, so a crash leaves the closed-or-refusing state too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::firewall::nft::NetlinkFirewall;
use crate::firewall::plan::{plan, Mode, Snapshot};
use crate::firewall::{Firewall, FirewallError};
use crate::link::{self, LinkError};

mod egress;
mod emulate;
mod files;
mod manage;
mod repair;
mod running;
mod startup;
pub mod status;
mod status_text;

pub use egress::Parents;
pub use emulate::emulate;

/// How often the files the daemon reads (its configuration, the emulator's file) are
/// checked for edits.
const FILE_POLL_EVERY: Duration = Duration::from_secs(1);

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
    #[error(transparent)]
    Status(#[from] status::StatusError),
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
    let egress_guards = egress::egress_guards(parents, handle).await?;
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

/// `imds-proxy rules`: the ruleset `run` would install now.
pub async fn rules(cfg: &Config) -> Result<String, AppError> {
    let handle = link::connect()?;
    let parents = Parents::of(cfg, true);
    Ok(plan(&current_snapshot(cfg, &handle, Mode::Open, &parents).await?).to_string())
}

/// `imds-proxy status`: the running daemon's report, as text or (`json`) as it came.
pub async fn status(json: bool) -> Result<(), AppError> {
    let report = status::ask().await?;
    if json {
        let text = serde_json::to_string_pretty(&report).expect("a report serialises");
        println!("{text}");
    } else {
        print!("{}", status_text::render(&report, crate::clock::unix_now()));
    }
    Ok(())
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

/// Re-reads the configuration (file, variables, flags) for a reload.
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// `imds-proxy run`: the ordered start-up, the running loop, then shutdown.
pub async fn run(cfg: Config, reload: Reload) -> Result<(), AppError> {
    let started = Instant::now();
    require_root()?;
    let _instance = single_instance()?;
    // Signals are caught from the first moment: a SIGTERM during start-up still ends in
    // the closed state rather than killing the process half-way.
    let signals = Signals::install()?;
    raise_fd_limit();
    let (commands, mut queue) = mpsc::unbounded_channel();
    let mut kernel = startup::Kernel::new(&cfg, commands.clone())?;
    startup::start(&mut kernel).await?;
    let mut running = kernel.running();
    info!(
        listen = %cfg.listen,
        listen6 = %running.listen6.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        upstream = %cfg.upstream.as_ref().map(ToString::to_string).unwrap_or_default(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "interception live"
    );
    // Only now may Docker (ordered after the unit) start its containers.
    let mut notifier = crate::notify::Notifier::from_env();
    notifier.ready("interception live");
    let emulator_file = running.emulator_tx.as_ref().and_then(|(_, f)| f.clone());
    running::spawn_sources(signals, cfg.config_file.clone(), emulator_file, commands);
    let signal = running
        .run_until_stopped(&cfg, &mut queue, &reload, &mut notifier)
        .await;
    notifier.stopping();
    running.shut_down(&cfg, signal).await
}

/// SIGTERM and SIGINT end the daemon; SIGHUP reloads.
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
