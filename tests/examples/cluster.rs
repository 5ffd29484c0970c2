//! Debugging aid: `cargo run -p oxlay-testbed --example cluster [tc|xdp]` builds a
//! two-host cluster, prints its namespaces, and keeps it until /tmp/oxlay-hold is removed.
fn main() -> anyhow::Result<()> {
    let decap = std::env::args().nth(1).unwrap_or_else(|| "tc".into());
    let c = oxlay_testbed::Cluster::new(2, 2, &decap)?;
    std::fs::write("/tmp/oxlay-hold", "")?;
    for (i, h) in c.hosts.iter().enumerate() {
        println!("host {i}: {} ", h.ns.name);
        for ct in &c.containers[i] {
            println!("  container {}", ct.name);
        }
    }
    while std::path::Path::new("/tmp/oxlay-hold").exists() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}
