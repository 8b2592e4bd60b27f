//! The `wgmesh-cni` binary: a CNI plugin when CNI_COMMAND is set, else the installer.

use std::{
    io::{Read, Write},
    process::ExitCode,
};

use wgmesh_cni::{
    cli::{self, Command},
    error::CniError,
    install,
    protocol::{self, Invocation, Outcome},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inv = Invocation::from_env();
    // A runtime always sets CNI_COMMAND; without it we are the installer or run by hand.
    if inv.command.is_none() {
        match args.first().map(String::as_str) {
            Some("install" | "uninstall") => return installer(&args),
            Some("-h" | "--help" | "help") => {
                print!("{}", cli::USAGE);
                return ExitCode::SUCCESS;
            }
            _ => eprint!("{}", cli::USAGE),
        }
    }
    let outcome = match read_stdin(&inv) {
        Ok(stdin) => protocol::run(&inv, &stdin),
        Err(e) => Outcome {
            stdout: serde_json::to_string(&e.to_result(rscni_types::version::SpecVersion::CURRENT))
                .unwrap_or_default(),
            exit_code: 1,
        },
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if outcome.exit_code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Reads the config; skipped without CNI_COMMAND so a person at a terminal is not kept waiting.
fn read_stdin(inv: &Invocation) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    if inv.command.is_some() {
        std::io::stdin().read_to_end(&mut buf).map_err(|e| {
            CniError::Io(format!(
                "cannot read the network configuration from stdin: {e}"
            ))
        })?;
    }
    Ok(buf)
}

fn installer(args: &[String]) -> ExitCode {
    let result = match cli::parse(args) {
        Ok(Command::Install(opts)) => install::install(&opts),
        Ok(Command::Uninstall { bin_dir, conf_dir }) => install::uninstall(&bin_dir, &conf_dir),
        Err(e) => {
            eprintln!("wgmesh-cni: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(report) => {
            for line in report.0 {
                println!("wgmesh-cni: {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wgmesh-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
