use super::*;

/// Lease deadlines count in the boot clock of the boot that wrote them. A store
/// file from another boot, or written by a build that used the wall clock (no boot
/// id), gets every lease a full TTL from now instead of expiring them all at once
/// or keeping them forever.
#[tokio::test]
async fn leases_from_another_clock_get_a_full_ttl() {
    let folder = super::super::faulty::TempFolder::new();
    let path = folder.0.join("store.json");
    let store = EmbeddedStore::new(&path).unwrap();
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    store.put("/k", "v", Some(lease)).await.unwrap();
    for (boot, expires) in [("", 1), ("another-boot", u64::MAX / 2)] {
        // Rewrite the file as another boot (or the wall clock) left it.
        let mut state: State = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state.boot_id = boot.to_owned();
        state.leases.get_mut(&lease).unwrap().expires_ms = expires;
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
        store.keep_alive(lease).await.unwrap();
        assert!(store.get("/k").await.unwrap().is_some(), "boot {boot:?}");
        let state: State = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let left = state.leases[&lease].expires_ms.saturating_sub(now_ms());
        assert!(
            left > 25_000 && left <= 30_000,
            "boot {boot:?}: {left} ms left"
        );
    }
}
