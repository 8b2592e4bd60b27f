//! `wgmesh-node-agent`: see `wgmesh-node-agent --help` and node-agent/README.md.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use wgmesh_node_agent::agent::Agent;
use wgmesh_node_agent::cleanup::{cleanup, CleanupPlan};
use wgmesh_node_agent::cli::{Cli, Command};
use wgmesh_node_agent::key;

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wgmesh-node-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let cfg = (*args).into_config().map_err(anyhow::Error::msg)?;
            tracing::info!(node = %cfg.node_name, interface = %cfg.interface, fail_closed = cfg.fail_closed, "starting");
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone())
                    .context("installing signal handler")?;
            }
            // A file a killed agent left must not admit pods while this one cannot start.
            if let Err(e) = wgmesh_node_agent::readiness::Readiness::new(&cfg.readiness_path).set(false) {
                tracing::warn!(error = %e, path = %cfg.readiness_path.display(), "cannot remove a stale readiness file");
            }
            let mut agent = Agent::new(cfg)?;
            agent.run(&stop);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pubkey(args) => {
            let (k, _) = key::load_or_create(&args.private_key)?;
            println!("{}", k.public_key());
            Ok(ExitCode::SUCCESS)
        }
        Command::RotateKey(args) => {
            let k = key::rotate(&args.private_key)?;
            println!("{}", k.public_key());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup(args) => {
            let errors = cleanup(&CleanupPlan {
                interface: &args.common.interface,
                table: args.common.table,
                rule_priority: args.common.rule_priority,
                readiness_path: &args.common.readiness_path,
                public_key_file: args.common.public_key_file.as_deref(),
                private_key: args.remove_key.then_some(args.key.private_key.as_path()),
            });
            for e in &errors {
                eprintln!("wgmesh-node-agent cleanup: {e}");
            }
            Ok(if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
