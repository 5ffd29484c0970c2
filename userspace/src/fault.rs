//! Fault injection for the end-to-end tests of multi-step changes: `OXLAY_FAULT=<step>`
//! makes the named step fail, once per process, so that a test can check the change is
//! undone. Compiled into debug builds only (the tests' daemons); release builds ignore
//! the variable. (fail-rs does this behind a Cargo feature, which cannot follow the
//! build profile; these few lines can.)
use anyhow::Result;

/// Steps a test can make fail.
pub mod step {
    /// Recording an endpoint's wiring in the store, after its veth is wired.
    pub const ENDPOINT_RECORD: &str = "endpoint-record";
    /// Reading an endpoint's network from the store while adopting it at start.
    pub const ADOPT_NETWORK_READ: &str = "adopt-network-read";
    /// Reading a Docker container's names after it joined (as if oxlay restarted first).
    pub const DOCKER_NAMES: &str = "docker-names";
}

/// Fails when `OXLAY_FAULT` names `step` and it has not failed yet in this process.
pub fn inject(step: &str) -> Result<()> {
    #[cfg(debug_assertions)]
    {
        use std::sync::{Mutex, OnceLock};
        static FIRED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
        if std::env::var("OXLAY_FAULT").is_ok_and(|f| f.split(',').any(|s| s == step)) {
            let mut fired = FIRED
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !fired.iter().any(|s| s == step) {
                fired.push(step.to_owned());
                anyhow::bail!("injected fault at {step} (OXLAY_FAULT)");
            }
        }
    }
    let _ = step;
    Ok(())
}
