//! `wgmesh-tunnel [-f|--foreground] IFNAME`: a userspace WireGuard interface, configured with
//! the stock `wg` tool over /var/run/wireguard/IFNAME.sock (the wireguard-go convention).

use anyhow::Context;
use clap::Parser;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use wgmesh_tunnel::shell::Engine;

/// Set in the daemon child: its stdout is the pipe on which it reports readiness.
const CHILD_ENV: &str = "WGMESH_TUNNEL_DAEMON_CHILD";

#[derive(Parser)]
#[command(name = "wgmesh-tunnel", version, about = "Userspace WireGuard interface, configured with `wg` over UAPI")]
struct Cli {
    /// Stay in the foreground instead of daemonizing.
    #[arg(short, long)]
    foreground: bool,
    /// Interface name (at most 15 bytes).
    interface: String,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && !n.contains(['/', ':'])
        && !n.chars().any(char::is_whitespace)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !valid_name(&cli.interface) {
        eprintln!("wgmesh-tunnel: invalid interface name {:?} (1-15 bytes, no '/', ':' or spaces)", cli.interface);
        return ExitCode::from(2);
    }
    let child = std::env::var_os(CHILD_ENV).is_some();
    if !cli.foreground && !child {
        return match daemonize(&cli.interface) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("wgmesh-tunnel: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(child);
    let (engine, listener) = match Engine::start(&cli.interface) {
        Ok(x) => x,
        Err(e) => {
            if child {
                let _ = writeln!(std::io::stdout(), "error: {e}");
            }
            eprintln!("wgmesh-tunnel: {e}");
            return ExitCode::FAILURE;
        }
    };
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, engine.stop.clone()) {
            eprintln!("wgmesh-tunnel: cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    tracing::info!(interface = %cli.interface, socket = %engine.socket_path.display(), "started");
    if child {
        // Tell the parent we are ready, then let go of its pipe.
        let _ = writeln!(std::io::stdout(), "ok");
        let _ = std::io::stdout().flush();
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            // SAFETY: dup2 onto our own stdout descriptor.
            unsafe { libc::dup2(null.as_raw_fd(), 1) };
        }
    }
    engine.run(listener);
    ExitCode::SUCCESS
}

/// Logs go to stderr; LOG_LEVEL (error|verbose|debug, as wireguard-go) or RUST_LOG choose how much.
fn init_logging(child: bool) {
    let filter = match std::env::var("LOG_LEVEL").as_deref() {
        Ok("debug") => "debug".to_string(),
        Ok("verbose") => "info".to_string(),
        Ok("error") | Ok("silent") => "error".to_string(),
        _ => std::env::var("RUST_LOG").unwrap_or_else(|_| if child { "warn".into() } else { "info".into() }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Re-executes ourselves detached, and returns once the child reports the interface and its
/// socket exist (wg-quick runs `wg setconf` right after we return).
fn daemonize(name: &str) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find own executable")?;
    let verbose = std::env::var_os("LOG_LEVEL").is_some() || std::env::var_os("RUST_LOG").is_some();
    let stderr = if verbose { Stdio::inherit() } else { Stdio::null() };
    let mut cmd = Command::new(exe);
    cmd.arg(name).env(CHILD_ENV, "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the daemon process")?;
    let out = child.stdout.take().context("daemon pipe missing")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).context("reading daemon status")?;
    match line.trim_end() {
        "ok" => Ok(ExitCode::SUCCESS),
        msg => {
            let _ = child.wait();
            let msg = msg.strip_prefix("error: ").unwrap_or("the daemon exited during start-up");
            eprintln!("wgmesh-tunnel: {msg}");
            Ok(ExitCode::FAILURE)
        }
    }
}
