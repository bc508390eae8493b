//! The running daemon's one loop. Every source (signals, link and route notifications,
//! drift reports, Docker's bridges, the timers, edits of the files it reads) sends a
//! [`Command`] down one channel; the loop takes what is queued at once as a batch, so a
//! burst costs one apply, and it is the only place that changes the running state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::egress::{egress_event, Parents};
use super::emulate::reload_emulator;
use super::files::FileWatch;
use super::repair::{self, Wanted};
use super::{remove_interception, AppError, Reload, Signals, FILE_POLL_EVERY};
use crate::config::Config;
use crate::emulator::EmulatorConfig;
use crate::errors::error_chain;
use crate::firewall::plan::Mode;
use crate::link::{self, LinkEvent};
use crate::notify::Notifier;
use crate::policy::select::Policies;
use crate::proxy;
use crate::reconcile::{Event, Reconciler};

/// How often the table's existence is verified, on top of change notifications.
const VERIFY_EVERY: Duration = Duration::from_millis(500);
/// How often the link list is re-read, on top of link notifications.
const RELIST_LINKS_EVERY: Duration = Duration::from_secs(30);

/// What the running loop reacts to.
#[derive(Debug)]
pub(super) enum Command {
    /// A change for the reconciler: a link, drift, Docker's bridges, the periodic
    /// verification.
    Reconcile(Event),
    /// Re-read the links (notifications can be lost), and with them the own link and
    /// the macvlan parents.
    Resync,
    /// Re-read what `Reread` says.
    Reload(Reread),
    /// Stop, for this signal.
    Stop(&'static str),
}

/// What a reload re-reads, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reread {
    /// SIGHUP: the configuration and the emulator's file.
    Both,
    /// The configuration file was edited.
    Config,
    /// The emulator's file was edited.
    Emulator,
}

impl From<LinkEvent> for Command {
    fn from(e: LinkEvent) -> Self {
        match e {
            LinkEvent::Resync => Command::Resync,
            e => Command::Reconcile(Event::Link(e)),
        }
    }
}

/// What the running daemon holds between start-up and shutdown.
pub(super) struct Running {
    pub rec: Reconciler,
    pub handle: rtnetlink::Handle,
    pub stop_proxy: oneshot::Sender<()>,
    pub server: tokio::task::JoinHandle<proxy::DrainReport>,
    /// Where the proxy listens for IPv6 callers (`None`: the host has no usable IPv6).
    pub listen6: Option<std::net::SocketAddrV6>,
    /// Which interfaces the macvlan guard follows.
    pub parents: Parents,
    pub policies_tx: watch::Sender<Arc<Policies>>,
    /// The emulator's file in force, and where it comes from.
    pub emulator_tx: Option<(
        watch::Sender<Arc<EmulatorConfig>>,
        Option<std::path::PathBuf>,
    )>,
    /// What `/readyz` reports of the tables.
    pub readiness: Arc<super::manage::Readiness>,
}

/// Sends the signals, the timers and file edits as commands.
pub(super) fn spawn_sources(
    mut signals: Signals,
    config_file: Option<std::path::PathBuf>,
    emulator_file: Option<std::path::PathBuf>,
    commands: mpsc::UnboundedSender<Command>,
) {
    tokio::spawn(async move {
        let mut verify = tokio::time::interval(VERIFY_EVERY);
        let mut relist = tokio::time::interval(RELIST_LINKS_EVERY);
        let mut poll = tokio::time::interval(FILE_POLL_EVERY);
        let mut config = FileWatch::new(config_file.as_deref());
        let mut emulator = FileWatch::new(emulator_file.as_deref());
        loop {
            let cmd = tokio::select! {
                _ = signals.term.recv() => Command::Stop("SIGTERM"),
                _ = signals.int.recv() => Command::Stop("SIGINT"),
                _ = signals.hup.recv() => Command::Reload(Reread::Both),
                _ = verify.tick() => Command::Reconcile(Event::Verify),
                _ = relist.tick() => Command::Resync,
                _ = poll.tick() => {
                    let edited = [(config.changed(), Reread::Config), (emulator.changed(), Reread::Emulator)];
                    for (_, what) in edited.into_iter().filter(|(changed, _)| *changed) {
                        if commands.send(Command::Reload(what)).is_err() {
                            return;
                        }
                    }
                    continue;
                }
            };
            if commands.send(cmd).is_err() {
                return;
            }
        }
    });
}

impl Running {
    /// Takes commands until one says stop; returns the signal's name.
    pub async fn run_until_stopped(
        &mut self,
        cfg: &Config,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        reload: &Reload,
        notifier: &mut Notifier,
    ) -> &'static str {
        while let Some(first) = commands.recv().await {
            // Whatever else is already queued joins it: one apply for a burst.
            let mut batch = Vec::new();
            let mut resync = false;
            let mut next = Some(first);
            while let Some(cmd) = next.take().or_else(|| commands.try_recv().ok()) {
                match cmd {
                    Command::Reconcile(e) => batch.push(e),
                    Command::Resync => resync = true,
                    Command::Reload(what) => self.reload(cfg, reload, what),
                    Command::Stop(signal) => return signal,
                }
            }
            if !batch.is_empty() || resync {
                self.reconcile(cfg, batch, resync, notifier).await;
            }
        }
        "the command channel closed"
    }

    /// One batch: the facts it needs looked up, the own link kept, one apply.
    async fn reconcile(
        &mut self,
        cfg: &Config,
        mut batch: Vec<Event>,
        resync: bool,
        notifier: &mut Notifier,
    ) {
        if resync {
            batch.extend(links_event(&self.handle).await);
        }
        let egress = egress_event(&self.parents, &self.handle, &batch, resync).await;
        batch.extend(egress);
        let wanted = Wanted {
            name: cfg.link_name.clone(),
            addr: *cfg.listen.ip(),
            addr6: self.listen6.map(|a| *a.ip()),
            holds_imds: self.emulator_tx.is_some(),
        };
        repair::repair(&repair::Netlink(&self.handle), &wanted, &batch, resync).await;
        let verified = batch.iter().any(|e| matches!(e, Event::Verify));
        // A burst of changes (a deleted table reports each of its rules) is one event:
        // a hundred of them would push the failure they cause out of status's record.
        if let Some(changes) = crate::reconcile::drift_in(&batch) {
            warn!(changes = %changes, "nftables table changed outside the daemon");
            crate::metrics::get()
                .tables
                .get_or_create(&crate::metrics::KindLabels { kind: "drift" })
                .inc();
            self.readiness.table_event("drift", changes);
        }
        let result = self.rec.handle(batch).await;
        count_tables(&result);
        if let Ok(crate::reconcile::Outcome::Restored) = &result {
            let detail = "put back as planned".to_owned();
            self.readiness.table_event("restored", detail);
        }
        let s = self.rec.snapshot();
        let bridges = s.bridges.iter().cloned().collect();
        self.readiness.plan(s.mode == Mode::Open, bridges);
        match result {
            // The tables are verified (or were just restored): the daemon is alive and
            // in charge. A loop that hangs, or tables it cannot keep, starve the
            // watchdog and systemd restarts the daemon; the tables stay closed meanwhile.
            Ok(_) if verified => {
                self.readiness.tables_ok();
                notifier.healthy(Instant::now());
            }
            Ok(_) => self.readiness.tables_ok(),
            Err(e) => {
                let why = error_chain(&e);
                warn!(error = %why, "failed to update the nftables table; retrying on the next event");
                self.readiness.tables_failed(why);
            }
        }
    }

    /// Re-reads the configuration (its policies take effect; a configuration that does
    /// not validate changes nothing and says why) and the emulator's file.
    fn reload(&self, running: &Config, reload: &Reload, what: Reread) {
        let trigger = match what {
            Reread::Both => "SIGHUP",
            Reread::Config => "config file changed",
            Reread::Emulator => "emulator file changed",
        };
        if what != Reread::Emulator {
            self.reload_config(running, reload, trigger);
        }
        if what != Reread::Config {
            if let Some((tx, file)) = &self.emulator_tx {
                reload_emulator(tx, file.as_deref(), trigger);
            }
        }
    }

    fn reload_config(&self, running: &Config, reload: &Reload, trigger: &str) {
        let new = match reload() {
            Ok(new) => new,
            Err(e) => {
                warn!(trigger, error = %error_chain(&e), "configuration reload refused; the previous configuration keeps serving");
                return;
            }
        };
        let changed = self.policies_tx.send_if_modified(|current| {
            let changed = **current != new.policies;
            if changed {
                *current = Arc::new(new.policies.clone());
            }
            changed
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

    /// Closed first (new container connections are refused), then the drain, then
    /// (only with --remove-on-exit) the table and link go.
    pub async fn shut_down(mut self, cfg: &Config, signal: &str) -> Result<(), AppError> {
        info!(
            signal,
            "shutting down: refusing new container connections, draining in-flight requests"
        );
        if let Err(e) = self.rec.handle(vec![Event::SetMode(Mode::Closed)]).await {
            warn!(error = %error_chain(&e), "failed to close the interception");
        }
        let _ = self.stop_proxy.send(());
        let report = self.server.await.unwrap_or_else(|e| {
            warn!(error = %e, "the proxy task failed");
            proxy::DrainReport { abandoned: 0 }
        });
        super::status::remove_socket();
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

/// An apply of the tables, in the metrics.
fn count_tables<E>(result: &Result<crate::reconcile::Outcome, E>) {
    let kind = match result {
        Ok(crate::reconcile::Outcome::Unchanged) => return,
        Ok(crate::reconcile::Outcome::Applied) => "applied",
        Ok(crate::reconcile::Outcome::Restored) => "restored",
        Err(_) => "failed",
    };
    crate::metrics::get()
        .tables
        .get_or_create(&crate::metrics::KindLabels { kind })
        .inc();
}

async fn links_event(handle: &rtnetlink::Handle) -> Option<Event> {
    match link::list_links(handle).await {
        Ok(l) => Some(Event::Links(l.into_values().collect())),
        Err(e) => {
            warn!(error = %error_chain(&e), "failed to list links");
            None
        }
    }
}
