//! Docker's API shapes → the inventory's own. Pure.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerInspectResponse, ContainerSummary, EndpointSettings, EventMessage, Network,
    NetworkInspect,
};

use super::state::{Addresses, Container};
use super::ContainerId;

/// A running container from Docker's container list (no pid: a list has none).
pub fn from_summary(c: &ContainerSummary) -> Option<Container> {
    let id = c.id.clone()?;
    let name = display_name(c.names.as_ref().and_then(|n| n.first()), &id);
    let networks = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref());
    Some(Container {
        id: ContainerId(id),
        name,
        labels: c.labels.clone().unwrap_or_default().into_iter().collect(),
        image: c.image.clone().unwrap_or_default(),
        networks: endpoints(networks),
        pid: None,
    })
}

/// A container from an inspect; `None` unless it is running.
pub fn from_inspect(c: &ContainerInspectResponse) -> Option<Container> {
    let state = c.state.as_ref()?;
    if state.running != Some(true) {
        return None;
    }
    let id = c.id.clone()?;
    let name = display_name(c.name.as_ref(), &id);
    let networks = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref());
    Some(Container {
        id: ContainerId(id),
        name,
        labels: c
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        image: c
            .config
            .as_ref()
            .and_then(|cfg| cfg.image.clone())
            .unwrap_or_default(),
        networks: endpoints(networks),
        pid: state.pid.filter(|p| *p > 0),
    })
}

/// A container's name without Docker's leading `/`, else its short id.
fn display_name(name: Option<&String>, id: &str) -> String {
    name.map(|n| n.trim_start_matches('/').to_owned())
        .unwrap_or_else(|| id.chars().take(12).collect())
}

/// Endpoints with an IPv4 address (a container on the host network has none).
fn endpoints(networks: Option<&HashMap<String, EndpointSettings>>) -> BTreeMap<String, Addresses> {
    networks
        .into_iter()
        .flatten()
        .filter_map(|(net, ep)| {
            let ipv4 = ep.ip_address.as_deref()?.parse().ok()?;
            Some((
                net.clone(),
                Addresses {
                    ipv4,
                    ipv6: ep
                        .global_ipv6_address
                        .as_deref()
                        .and_then(|a| a.parse().ok()),
                    mac: ep.mac_address.clone().filter(|m| !m.is_empty()),
                },
            ))
        })
        .collect()
}

/// The Linux bridge a Docker network of the `bridge` driver uses: the name its options
/// give (`docker0`, `docker_gwbridge`, any name a user chose), else `br-<id>`.
pub fn bridge_of(n: &Network) -> Option<String> {
    if n.driver.as_deref() != Some("bridge") {
        return None;
    }
    if let Some(name) = n
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
        .filter(|name| !name.is_empty())
    {
        return Some(name.clone());
    }
    let id = n.id.as_deref()?;
    Some(format!("br-{}", &id[..id.len().min(12)]))
}

/// Docker's bridge networks: network name → bridge.
pub fn bridges(list: &[Network]) -> HashMap<String, String> {
    list.iter()
        .filter_map(|n| Some((n.name.clone()?, bridge_of(n)?)))
        .collect()
}

/// The endpoints a network lists, by container (a Swarm container's endpoint on
/// `docker_gwbridge` is listed only here). Entries no container owns (`ingress-sbox`)
/// are left out: they name no one.
pub fn network_endpoints(n: &NetworkInspect) -> Vec<(ContainerId, Addresses)> {
    n.containers
        .iter()
        .flatten()
        .filter(|(id, _)| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter_map(|(id, ep)| {
            let ipv4 = ep
                .ipv4_address
                .as_deref()?
                .split('/')
                .next()?
                .parse()
                .ok()?;
            Some((
                ContainerId(id.clone()),
                Addresses {
                    ipv4,
                    ipv6: ep
                        .ipv6_address
                        .as_deref()
                        .and_then(|a| a.split('/').next()?.parse().ok()),
                    mac: ep.mac_address.clone().filter(|m| !m.is_empty()),
                },
            ))
        })
        .collect()
}

/// What one Docker event means for the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A container was created: its name and labels, from the event itself (a
    /// container's first request may come before Docker answers an inspect).
    Created(ContainerId, String, BTreeMap<String, String>),
    /// The container started (or was renamed): inspect it.
    Inspect(ContainerId),
    /// The container's networks changed: inspect it if it is running (a container
    /// being created is connected before it starts, and its start will be inspected).
    Reinspect(ContainerId),
    /// The container stopped.
    Gone(ContainerId),
    /// A network appeared or went: list networks.
    Networks,
    Nothing,
}

/// Classifies a Docker event.
pub fn change(ev: &EventMessage) -> Change {
    use bollard::models::EventMessageTypeEnum as T;
    let action = ev.action.as_deref().unwrap_or_default();
    let actor = ev.actor.as_ref();
    let id = |s: Option<&String>| s.map(|s| ContainerId(s.clone()));
    match ev.typ {
        Some(T::CONTAINER) => match (action, id(actor.and_then(|a| a.id.as_ref()))) {
            ("create", Some(c)) => {
                // The attributes are the container's labels plus its name and image.
                let mut labels: BTreeMap<String, String> = actor
                    .and_then(|a| a.attributes.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let name = labels
                    .remove("name")
                    .unwrap_or_else(|| c.short().to_owned());
                labels.remove("image");
                Change::Created(c, name, labels)
            }
            ("start" | "restart" | "rename", Some(c)) => Change::Inspect(c),
            ("die" | "destroy", Some(c)) => Change::Gone(c),
            _ => Change::Nothing,
        },
        Some(T::NETWORK) => match action {
            "create" | "destroy" => Change::Networks,
            "connect" | "disconnect" => {
                match id(actor.and_then(|a| a.attributes.as_ref()?.get("container"))) {
                    Some(c) => Change::Reinspect(c),
                    None => Change::Nothing,
                }
            }
            _ => Change::Nothing,
        },
        _ => Change::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{EventActor, EventMessageTypeEnum};

    fn event(
        typ: EventMessageTypeEnum,
        action: &str,
        id: &str,
        attrs: &[(&str, &str)],
    ) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn events_say_what_to_ask_docker_and_what_they_already_tell() {
        use EventMessageTypeEnum::{CONTAINER, NETWORK};
        let c = || ContainerId("c".repeat(64));
        let cid = "c".repeat(64);
        assert_eq!(
            change(&event(
                CONTAINER,
                "create",
                &cid,
                &[
                    ("name", "web"),
                    ("image", "busybox"),
                    ("imds-proxy.policy", "deny")
                ]
            )),
            Change::Created(
                c(),
                "web".into(),
                [("imds-proxy.policy".to_owned(), "deny".to_owned())].into()
            )
        );
        assert_eq!(
            change(&event(CONTAINER, "start", &cid, &[])),
            Change::Inspect(c())
        );
        assert_eq!(
            change(&event(CONTAINER, "die", &cid, &[])),
            Change::Gone(c())
        );
        assert_eq!(
            change(&event(CONTAINER, "exec_start", &cid, &[])),
            Change::Nothing
        );
        assert_eq!(
            change(&event(NETWORK, "connect", "netid", &[("container", &cid)])),
            Change::Reinspect(c())
        );
        assert_eq!(
            change(&event(NETWORK, "create", "netid", &[])),
            Change::Networks
        );
    }

    #[test]
    fn swarm_gateway_endpoints_are_read_per_container_and_sandboxes_name_no_one() {
        let n: NetworkInspect = serde_json::from_value(serde_json::json!({
            "Name": "docker_gwbridge",
            "Containers": {
                "ingress-sbox": {"Name": "gateway_ingress-sbox", "IPv4Address": "172.18.0.2/16", "MacAddress": "02:42:ac:12:00:02"},
                "a".repeat(64): {"Name": "gateway_aaaa", "IPv4Address": "172.18.0.3/16", "MacAddress": "02:42:ac:12:00:03", "IPv6Address": ""}
            }
        }))
        .unwrap();
        let eps = network_endpoints(&n);
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].0, ContainerId("a".repeat(64)));
        assert_eq!(eps[0].1.ipv4.to_string(), "172.18.0.3");
        assert_eq!(eps[0].1.ipv6, None);
    }

    #[test]
    fn a_bridge_networks_bridge_is_the_one_its_options_name_or_br_and_its_id() {
        let net = |driver: &str, opt: Option<&str>| Network {
            name: Some("n".into()),
            id: Some("0123456789abcdef".into()),
            driver: Some(driver.into()),
            options: opt
                .map(|b| [("com.docker.network.bridge.name".to_owned(), b.to_owned())].into()),
            ..Default::default()
        };
        assert_eq!(
            bridge_of(&net("bridge", Some("docker_gwbridge"))).as_deref(),
            Some("docker_gwbridge")
        );
        assert_eq!(
            bridge_of(&net("bridge", Some("my-bridge"))).as_deref(),
            Some("my-bridge")
        );
        assert_eq!(
            bridge_of(&net("bridge", None)).as_deref(),
            Some("br-0123456789ab")
        );
        assert_eq!(bridge_of(&net("overlay", None)), None);
        assert_eq!(bridge_of(&net("macvlan", Some("x"))), None);
    }
}
