//! `imds-proxy status`: the running daemon's own view, asked over a Unix socket only
//! root reaches (in the root-only `/run/imds-proxy`, mode 0600, and the peer's uid
//! checked): where answers come from, the tables and bridges, each known container with
//! its identity, policy and latest decision, the cache, recent drift.
//!
//! The protocol is the smallest there is: the daemon writes one JSON document to each
//! connection and closes it.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::manage::{Readiness, Tables};
use crate::docker::{Endpoint, InventoryHandle};
use crate::policy::select::{self, Asker, Policies};
use crate::providers::identity::Identity;
use crate::proxy::trail::Last;
use crate::proxy::Proxy;

/// How long `status` waits for the daemon's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `status` could not say.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No socket, or one a daemon that ended left behind (nothing listens on it).
    #[error("no daemon runs in this network namespace ({0}: {1})")]
    NotRunning(PathBuf, &'static str),
    #[error("`status` needs root, as the daemon's socket {0} is root's only")]
    NotRoot(PathBuf),
    #[error("cannot ask the daemon at {0}")]
    Io(PathBuf, #[source] io::Error),
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the daemon's answer is not a status report")]
    Garbled(#[source] serde_json::Error),
}

/// What the daemon says of itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub pid: u32,
    pub version: String,
    /// `upstream <url>`, or `emulator <file>`.
    pub source: String,
    pub listen: Vec<String>,
    /// Why it is not ready; empty: ready.
    pub not_ready: Vec<String>,
    pub tables: Tables,
    pub docker_connected: bool,
    pub containers: Vec<ContainerStatus>,
    /// Callers that are no known container (the host, unknown ports), latest first.
    pub other_callers: Vec<Last>,
    /// What the cache holds, by kind; `None`: no cache (the emulator).
    pub cache: Option<BTreeMap<String, usize>>,
}

/// One known container as the proxy sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub image: String,
    pub network: String,
    pub ipv4: String,
    pub ipv6: Option<String>,
    /// The bridge port its requests are identified by.
    pub port: Option<u32>,
    pub policy: String,
    /// Why that policy applies.
    pub policy_reason: String,
    /// The identities its labels pin (`instance`: the instance's own), or the label
    /// error that has it refused.
    pub identity: BTreeMap<String, String>,
    pub last: Option<Last>,
}

/// What the status socket reads.
pub(crate) struct Source {
    pub source: String,
    pub listen: Vec<String>,
    pub readiness: Arc<Readiness>,
    pub not_ready: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    pub inventory: InventoryHandle,
    pub policies: tokio::sync::watch::Receiver<Arc<Policies>>,
    /// Weak: the proxy goes (and its audit trail writes what it counted) when serving
    /// ends, whatever the socket holds.
    pub proxy: std::sync::Weak<Proxy>,
}

/// The socket of the daemon of the network namespace this process is in.
pub fn socket_path() -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/self/ns/net")?.ino();
    Ok(PathBuf::from(format!(
        "{}/netns-{netns}.sock",
        super::LOCK_DIR
    )))
}

/// Listens on the status socket for the rest of the process (the directory exists: the
/// instance lock made it). A socket that cannot be made is logged, not fatal.
pub(crate) fn spawn(source: Source) {
    let path = match socket_path() {
        Ok(p) => p,
        Err(e) => return warn!(error = %e, "no status socket: the namespace cannot be named"),
    };
    // A previous run's socket: this process holds the namespace's lock, so it is stale.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => return warn!(path = %path.display(), error = %e, "no status socket"),
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    info!(path = %path.display(), "status socket (imds-proxy status)");
    let source = Arc::new(source);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move { answer(stream, &source).await });
        }
    });
}

/// Removes the socket when the daemon stops.
pub(crate) fn remove_socket() {
    if let Ok(p) = socket_path() {
        let _ = std::fs::remove_file(p);
    }
}

async fn answer(mut stream: UnixStream, source: &Source) {
    // Root's only, whatever the file's mode says.
    if !stream.peer_cred().is_ok_and(|c| c.uid() == 0) {
        return;
    }
    let body = serde_json::to_vec(&source.report()).expect("a report serialises");
    let _ = tokio::time::timeout(ASK_TIMEOUT, stream.write_all(&body)).await;
}

impl Source {
    fn report(&self) -> Report {
        let inventory = self.inventory.rx.borrow().clone();
        let policies = self.policies.borrow().clone();
        let proxy = self.proxy.upgrade();
        let mut last: BTreeMap<String, Last> = BTreeMap::new();
        let mut other_callers = Vec::new();
        let decisions = proxy.as_ref().map(|p| p.trail().last_decisions());
        for l in decisions.unwrap_or_default() {
            if l.container_id.is_empty() {
                other_callers.push(l);
            } else {
                last.insert(l.container_id.clone(), l);
            }
        }
        other_callers.sort_by_key(|l| std::cmp::Reverse(l.at));
        let mut containers: Vec<ContainerStatus> = inventory
            .endpoints()
            .map(|e| container(e, &policies, last.remove(e.container.short())))
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name).then(a.network.cmp(&b.network)));
        Report {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            source: self.source.clone(),
            listen: self.listen.clone(),
            not_ready: (self.not_ready)(),
            tables: self.readiness.tables(),
            docker_connected: inventory.connected,
            containers,
            other_callers,
            cache: proxy
                .and_then(|p| p.cache_census())
                .map(|c| c.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        }
    }
}

fn container(e: &Endpoint, policies: &Policies, last: Option<Last>) -> ContainerStatus {
    let (policy, reason) = select::policy_for(Asker::Container(&e.labels), policies);
    ContainerStatus {
        id: e.container.short().to_owned(),
        name: e.name.clone(),
        image: e.image.clone(),
        network: e.network.clone(),
        ipv4: e.ipv4.to_string(),
        ipv6: e.ipv6.map(|a| a.to_string()),
        port: e.port.map(|p| p.0),
        policy: policy.name.clone(),
        policy_reason: reason,
        identity: identity(&e.labels),
        last,
    }
}

/// The identities the labels pin, by provider, in words.
fn identity(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let id = match Identity::from_labels(labels) {
        Ok(id) => id,
        Err(e) => return BTreeMap::from([("error".to_owned(), e.to_string())]),
    };
    let mut out = BTreeMap::new();
    let azure = match &id.azure {
        None => "instance".to_owned(),
        Some(a) if a.is_system() => "system-assigned".to_owned(),
        Some(a) => [
            ("client_id", &a.client_id),
            ("object_id", &a.object_id),
            ("msi_res_id", &a.msi_res_id),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" "),
    };
    out.insert("azure".to_owned(), azure);
    let aws = match (&id.aws_assume, &id.aws_role) {
        (Some(a), _) => format!("assumes {}", a.role),
        (None, Some(role)) => format!("instance role {role}"),
        (None, None) => "instance".to_owned(),
    };
    out.insert("aws".to_owned(), aws);
    let gce = id
        .gce_service_account
        .clone()
        .unwrap_or_else(|| "instance".to_owned());
    out.insert("gce".to_owned(), gce);
    out
}

/// `imds-proxy status`: the running daemon's report.
pub async fn ask() -> Result<Report, StatusError> {
    let path = socket_path().map_err(|e| StatusError::Io(PathBuf::from("/proc/self/ns/net"), e))?;
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StatusError::NotRunning(path.clone(), "absent"),
            io::ErrorKind::ConnectionRefused => {
                StatusError::NotRunning(path.clone(), "nothing listens on it")
            }
            io::ErrorKind::PermissionDenied => StatusError::NotRoot(path.clone()),
            _ => StatusError::Io(path.clone(), e),
        })?;
    let mut body = Vec::new();
    tokio::time::timeout(ASK_TIMEOUT, stream.read_to_end(&mut body))
        .await
        .map_err(|_| StatusError::Timeout(ASK_TIMEOUT))?
        .map_err(|e| StatusError::Io(path.clone(), e))?;
    if body.is_empty() {
        return Err(StatusError::NotRoot(path));
    }
    serde_json::from_slice(&body).map_err(StatusError::Garbled)
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
