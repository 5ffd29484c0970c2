//! Which oxlay network each Docker network of a host is.
use std::collections::BTreeMap;

use anyhow::Result;

use super::keys::DOCKER;
use crate::store::Store;

// ---- Docker networks ----

/// Records that `host`'s Docker network `docker_id` is oxlay network `network`.
pub async fn bind_docker_network(
    store: &dyn Store,
    host: &str,
    docker_id: &str,
    network: &str,
) -> Result<()> {
    store
        .put(&format!("{DOCKER}{host}/{docker_id}"), network, None)
        .await
        .map(|_| ())
}

pub async fn unbind_docker_network(store: &dyn Store, host: &str, docker_id: &str) -> Result<()> {
    store
        .delete(&format!("{DOCKER}{host}/{docker_id}"))
        .await
        .map(|_| ())
}

/// `host`'s Docker networks: Docker ID → oxlay network.
pub async fn docker_networks(store: &dyn Store, host: &str) -> Result<BTreeMap<String, String>> {
    let prefix = format!("{DOCKER}{host}/");
    let (kvs, _) = store.list(&prefix).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| Some((kv.key.strip_prefix(&prefix)?.to_owned(), kv.value)))
        .collect())
}
