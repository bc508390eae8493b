//! The emulator's file: loaded at start, reloaded on SIGHUP or an edit (an invalid
//! edit is refused and the previous file keeps serving); and `imds-proxy emulate`, the
//! emulator alone on a plain address.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::files::FileWatch;
use super::{AppError, Signals, FILE_POLL_EVERY};
use crate::proxy::{self, Proxy, ProxySettings};

/// The emulator's file, validated, and a channel that carries its replacements.
pub(super) fn load_emulator(
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
    // The settings `run` has when nothing is configured.
    let defaults = crate::config::Config::defaults();
    let proxy = Arc::new(Proxy::new(ProxySettings {
        backend: proxy::Backend::Emulator(emulator),
        request_timeout: defaults.request_timeout,
        aws_request_timeout: defaults.aws_request_timeout,
        upstream_limits: defaults.upstream_limits,
        cache: defaults.cache,
        max_body_bytes: defaults.max_body_bytes,
        max_header_bytes: defaults.max_header_bytes,
        inventory: None,
        identify_wait: Duration::ZERO,
        origins: Arc::new(proxy::identify::EveryoneIsHost),
        policies: tokio::sync::watch::channel(Arc::new(policies)).1,
        assume: Default::default(),
        audit_summary: defaults.audit_summary,
    }));
    let mut signals = Signals::install()?;
    info!(%listen, file = %file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "built-in example".into()), "emulator serving");
    let reload_from = file.clone();
    let stop = async move {
        let mut edits = FileWatch::new(reload_from.as_deref());
        let mut tick = tokio::time::interval(FILE_POLL_EVERY);
        loop {
            tokio::select! {
                _ = signals.term.recv() => return,
                _ = signals.int.recv() => return,
                _ = signals.hup.recv() => reload_emulator(&tx, reload_from.as_deref(), "SIGHUP"),
                _ = tick.tick() => {
                    if edits.changed() {
                        reload_emulator(&tx, reload_from.as_deref(), "emulator file changed");
                    }
                }
            }
        }
    };
    proxy::serve(listener, proxy, stop, defaults.drain_timeout).await;
    Ok(())
}

/// Re-reads the emulator file; an invalid edit is refused with every reason and the
/// previous file keeps serving.
pub(super) fn reload_emulator(
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
