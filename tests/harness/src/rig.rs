//! The proxy in-process on loopback, as the loopback tiers run it: containers stand in
//! as addresses 127.0.0.N (bridge port N), an inventory names them, and a raw HTTP
//! client sends from any of those addresses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imds_proxy::policy::select::Policies;
use imds_proxy::ports::BridgePort;
use imds_proxy::proxy::{self, Proxy, ProxySettings};

use crate::{parse_answer, Answer};

/// A proxy serving on a free loopback port; stopped by sending on `stop`, its drain
/// report in `done`.
pub struct Running {
    pub addr: SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<proxy::DrainReport>,
}

/// Stands in for the kernel's port stamp: 127.0.0.1 is a host process, any other
/// loopback address 127.0.0.N came in by bridge port N, unless `forged` says which
/// port a source address really came in by.
#[derive(Debug, Default)]
pub struct FakeOrigins {
    pub forged: std::collections::HashMap<std::net::IpAddr, u32>,
}

impl proxy::identify::Origins for FakeOrigins {
    fn origin(&self, _local: SocketAddr, peer: SocketAddr) -> proxy::identify::Origin {
        use proxy::identify::Origin;
        if let Some(p) = self.forged.get(&peer.ip()) {
            return Origin::Port(BridgePort(*p));
        }
        match peer.ip() {
            std::net::IpAddr::V4(v4) if v4.octets()[3] == 1 => Origin::Host,
            std::net::IpAddr::V4(v4) => Origin::Port(BridgePort(v4.octets()[3] as u32)),
            _ => Origin::Elsewhere,
        }
    }
}

/// An inventory whose container `c` with address 127.0.0.N owns bridge port N.
pub fn inventory_of(
    list: &[bollard::models::ContainerSummary],
    connected: bool,
) -> imds_proxy::docker::InventoryHandle {
    let mut inv = imds_proxy::docker::Inventory::from_summaries(list, |id, _| {
        list.iter()
            .find(|c| c.id.as_deref() == Some(id))
            .and_then(|c| {
                c.network_settings
                    .as_ref()?
                    .networks
                    .as_ref()?
                    .values()
                    .next()?
                    .ip_address
                    .clone()
            })
            .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
            .map(|ip| BridgePort(ip.octets()[3] as u32))
    });
    inv.connected = connected;
    imds_proxy::docker::InventoryHandle::fixed(inv)
}

/// The settings of the loopback tests' proxy in front of the metadata service at
/// `upstream` (a [`crate::FakeImds`], or an address where none listens): every caller
/// the host or an unknown one (no inventory), both allowed; 2 s for every request; the
/// upstream's default limits and the default cache; small bodies. Tests change what
/// they are about.
pub fn settings(upstream: SocketAddr) -> ProxySettings {
    ProxySettings {
        backend: proxy::Backend::Upstream(format!("http://{upstream}").parse().unwrap()),
        request_timeout: Duration::from_secs(2),
        aws_request_timeout: Duration::from_secs(2),
        upstream_limits: Default::default(),
        cache: Default::default(),
        max_body_bytes: 1024,
        max_header_bytes: 8192,
        inventory: None,
        identify_wait: Duration::from_millis(300),
        origins: Arc::new(FakeOrigins::default()),
        policies: policies(Policies::builtin("allow", "allow")),
        assume: Default::default(),
        audit_summary: Duration::from_secs(60),
    }
}

/// The proxy's view of `policies`, as the daemon's reload would publish them.
pub fn policies(policies: Policies) -> tokio::sync::watch::Receiver<Arc<Policies>> {
    tokio::sync::watch::channel(Arc::new(policies)).1
}

/// Starts a proxy with `settings` on a free port of 127.0.0.1.
pub async fn start_settings(settings: ProxySettings) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = Arc::new(Proxy::new(settings));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(proxy::serve(
        listener,
        p,
        async {
            let _ = rx.await;
        },
        Duration::from_secs(5),
    ));
    Running {
        addr,
        stop: Some(tx),
        done,
    }
}

pub fn container(id: char, ip: &str, policy: &str) -> bollard::models::ContainerSummary {
    use bollard::models::{ContainerSummary, ContainerSummaryNetworkSettings, EndpointSettings};
    ContainerSummary {
        id: Some(id.to_string().repeat(64)),
        names: Some(vec![format!("/c-{policy}")]),
        labels: Some([("imds-proxy.policy".to_string(), policy.to_string())].into()),
        network_settings: Some(ContainerSummaryNetworkSettings {
            networks: Some(
                [(
                    "bridge".to_string(),
                    EndpointSettings {
                        ip_address: Some(ip.into()),
                        ..Default::default()
                    },
                )]
                .into(),
            ),
        }),
        ..Default::default()
    }
}

/// One raw request from `src` (a loopback address standing in for a container).
pub async fn from_raw(src: &str, addr: SocketAddr, req: String) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    parse_answer(&buf).unwrap()
}

/// A container with address 127.0.0.N (bridge port N) and these labels.
pub fn labelled(id: char, ip: &str, labels: &[(&str, &str)]) -> bollard::models::ContainerSummary {
    let mut c = container(id, ip, "allow");
    c.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c
}
