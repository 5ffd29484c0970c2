//! The `oxlay` command: the daemon, the CLI that talks to it (see `cli`), and the CNI
//! plugin when a runtime runs it with `CNI_COMMAND` set.
use std::process::ExitCode;

use clap::Parser;
use oxlay::cli::{self, Cli};

fn main() -> ExitCode {
    // Runtimes run the same binary as a CNI plugin ("type": "oxlay").
    if std::env::var_os("CNI_COMMAND").is_some() {
        return oxlay::plugins::cni::main();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<cli::ExitWith>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}
