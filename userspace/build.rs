//! Builds the eBPF object (crate `ebpf/`) and puts it in OUT_DIR, where `datapath.rs`
//! embeds it, so the `oxlay` binary is one file to copy to a host.
use std::{env, path::PathBuf};

mod build_ebpf;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    for watched in [
        "ebpf/src",
        "ebpf/Cargo.toml",
        "ebpf/Cargo.lock",
        "common/src",
        "userspace/build_ebpf.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=OXLAY_EBPF_OBJECT");
    let object = PathBuf::from(env::var("OUT_DIR").unwrap()).join("oxlay.bpf.o");
    // A prebuilt object may be supplied (e.g. by a packager); otherwise build it.
    let built = match env::var("OXLAY_EBPF_OBJECT") {
        Ok(prebuilt) => PathBuf::from(prebuilt),
        Err(_) => {
            build_ebpf::build_ebpf(root, &root.join("target/ebpf")).unwrap_or_else(|e| fail(&e))
        }
    };
    if let Err(e) = std::fs::copy(&built, &object) {
        fail(&format!("cannot copy {}: {e}", built.display()));
    }
}

/// Stops the build with a message (cargo shows a build script's stderr), no backtrace.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
