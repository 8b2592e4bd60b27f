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
        Ok(Command::Watch { opts, every }) => return watch(&opts, every),
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

/// `install --watch`: the main plugin may rewrite its config at any time (an upgrade, a
/// restart of its installer) and drop our entry; installing again puts it back. Logs a round
/// only when its outcome differs from the last one's, and exits 0 on SIGTERM or SIGINT without
/// uninstalling (a rolling update must not take the entry away).
fn watch(opts: &install::InstallOptions, every: std::time::Duration) -> ExitCode {
    use std::sync::{atomic::{AtomicBool, Ordering}, Arc};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("wgmesh-cni: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        let outcome = install::install(opts).map(|r| r.0).map_err(|e| e.to_string());
        if last.as_ref() != Some(&outcome) {
            match &outcome {
                Ok(lines) => lines.iter().for_each(|l| println!("wgmesh-cni: {l}")),
                Err(e) => eprintln!("wgmesh-cni: {e} (trying again every {}s)", every.as_secs()),
            }
            last = Some(outcome);
        }
        let until = std::time::Instant::now() + every;
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    println!("wgmesh-cni: stopped watching; the CNI config keeps its entry");
    ExitCode::SUCCESS
}
