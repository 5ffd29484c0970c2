//! Docker's names on oxlay's resolver. The plugin protocol tells a driver no container
//! name, so after Join the daemon asks dockerd which container joined (the network's
//! endpoints name it) and records its name and `--network-alias`es with the endpoint. A
//! daemon that starts reads the names of Docker endpoints that have none (an oxlay
//! restart came between a Join and its lookup).
use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use log::{info, warn};
use serde_json::Value;

use super::engine;
use crate::{
    daemon::{Daemon, EndpointKey},
    model,
};

/// How long dockerd may take to list a joined container among its network's.
const JOIN_WAIT: Duration = Duration::from_secs(30);
/// How long one answer of dockerd may take (a container's inspect waits for its start).
const ENGINE_WAIT: Duration = Duration::from_secs(30);

/// Records the names of the container that joined through `endpoint_id`, on a task of
/// its own (dockerd answers only once the container has started, which waits for the
/// Join to return).
pub(crate) fn record_later(
    d: Arc<Daemon>,
    network_id: String,
    endpoint_id: String,
    key: EndpointKey,
) {
    tokio::spawn(async move {
        let socket = d.config.docker.engine_socket.clone();
        let recorded = async {
            crate::fault::inject(crate::fault::step::DOCKER_NAMES)?;
            let names = container_names(&socket, &network_id, &endpoint_id, JOIN_WAIT).await?;
            d.set_names(&key, names.clone()).await?;
            anyhow::Ok(names)
        };
        match recorded.await {
            Ok(names) => info!("docker: endpoint {} is {}", key.0, names.join(", ")),
            Err(e) => warn!("docker: endpoint {} has no names: {e:#}", key.0),
        }
    });
}

/// Docker endpoints of this host without names: their names are read from dockerd
/// again, on a task of its own (their containers run: dockerd lists them at once).
pub(crate) fn recover_later(d: Arc<Daemon>) {
    tokio::spawn(async move {
        let (endpoints, bindings) = {
            let s = d.state.lock().await;
            let endpoints: Vec<(EndpointKey, String, Ipv4Addr)> = s
                .endpoints
                .iter()
                .filter(|(key, _)| key.0.starts_with("docker-"))
                .filter_map(|(key, ep)| Some((key.clone(), ep.network.clone()?, ep.address)))
                .collect();
            (endpoints, s.docker.networks.clone())
        };
        let socket = d.config.docker.engine_socket.clone();
        for (key, network, address) in endpoints {
            match model::endpoint(&*d.store, &network, address).await {
                Ok(Some(record)) if record.names.is_empty() => {}
                _ => continue,
            }
            // The sandbox name holds the endpoint ID's first 12 characters.
            let short = key.0.trim_start_matches("docker-");
            let docker_ids = bindings.iter().filter(|(_, n)| **n == network);
            for (docker_id, _) in docker_ids {
                let found = container_names(&socket, docker_id, short, Duration::ZERO).await;
                if let Ok(names) = found {
                    match d.set_names(&key, names.clone()).await {
                        Ok(()) => info!(
                            "docker: endpoint {} is {} (read at start)",
                            key.0,
                            names.join(", ")
                        ),
                        Err(e) => warn!("docker: endpoint {} has no names: {e:#}", key.0),
                    }
                    break;
                }
            }
        }
    });
}

/// The name and aliases of the container on the endpoint whose ID starts with
/// `endpoint_id` (the whole ID, or its first 12 characters) of Docker network
/// `network_id`, once dockerd lists it (asked again for up to `wait`).
async fn container_names(
    socket: &std::path::Path,
    network_id: &str,
    endpoint_id: &str,
    wait: Duration,
) -> Result<Vec<String>> {
    let get = |path: String| async move {
        tokio::time::timeout(ENGINE_WAIT, engine::get(socket, &path))
            .await
            .with_context(|| format!("dockerd did not answer {path} in time"))?
    };
    let deadline = tokio::time::Instant::now() + wait;
    let (network_name, container) = loop {
        let network = get(format!("/networks/{network_id}"))
            .await?
            .with_context(|| format!("dockerd does not know network {network_id}"))?;
        if let Some(container) = joined(&network, endpoint_id) {
            let name = network["Name"].as_str().unwrap_or_default().to_owned();
            break (name, container);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("dockerd lists no container on endpoint {endpoint_id}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let inspect = get(format!("/containers/{container}/json"))
        .await?
        .with_context(|| format!("container {container} went away"))?;
    Ok(names_of(&inspect, &network_name))
}

/// The ID of the container a network inspect lists on the endpoint whose ID starts with
/// `endpoint_id`. Until the container is attached, dockerd lists the endpoint under
/// "ep-<endpoint ID>".
fn joined(network: &Value, endpoint_id: &str) -> Option<String> {
    let ours = |c: &Value| {
        c["EndpointID"]
            .as_str()
            .is_some_and(|e| e.starts_with(endpoint_id))
    };
    network["Containers"]
        .as_object()?
        .iter()
        .find(|(_, c)| ours(c))
        .map(|(id, _)| id.clone())
        .filter(|id| !id.starts_with("ep-"))
}

/// A container's name and its aliases on `network` (Docker adds the short ID), those
/// that are DNS names.
fn names_of(inspect: &Value, network: &str) -> Vec<String> {
    let name = inspect["Name"].as_str().map(|n| n.trim_start_matches('/'));
    // Docker 20.10 lists the aliases (and the short ID) in Aliases; newer ones in
    // DNSNames as well.
    let on_network = &inspect["NetworkSettings"]["Networks"][network];
    let aliases: Vec<Value> = ["Aliases", "DNSNames"]
        .iter()
        .filter_map(|field| on_network[field].as_array())
        .flatten()
        .cloned()
        .collect();
    let mut names: Vec<String> = name
        .into_iter()
        .chain(aliases.iter().filter_map(Value::as_str))
        .filter(|n| crate::config::check_name("name", n).is_ok())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_joined_container_and_its_names_are_read_from_dockerd_answers() {
        let network = json!({"Name": "web", "Containers": {
            "c0ffee": {"Name": "other", "EndpointID": "e1"},
            "beef": {"Name": "srv", "EndpointID": "e2"},
        }});
        assert_eq!(joined(&network, "e2").as_deref(), Some("beef"));
        assert_eq!(joined(&network, "e3"), None);
        let long = json!({"Containers": {"cafe": {"EndpointID": "0123456789abcdef"}}});
        assert_eq!(
            joined(&long, "0123456789ab").as_deref(),
            Some("cafe"),
            "by prefix"
        );
        let attaching = json!({"Containers": {"ep-e4": {"Name": "x", "EndpointID": "e4"}}});
        assert_eq!(joined(&attaching, "e4"), None, "not attached yet");
        let inspect = json!({"Name": "/srv", "NetworkSettings": {"Networks": {
            "web": {"Aliases": ["www", "beef", "not a name", "srv"], "DNSNames": ["srv", "w2"]},
            "blue": {"Aliases": ["blue-only"]},
        }}});
        assert_eq!(names_of(&inspect, "web"), ["beef", "srv", "w2", "www"]);
    }
}
