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
            for line in report.lines {
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
    use std::time::{Duration, Instant};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("wgmesh-cni: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut last = None;
    let mut guard = FightGuard::new(every);
    while !stop.load(Ordering::Relaxed) {
        let result = install::install(opts);
        let pause = guard.after(result.as_ref().is_ok_and(|r| r.changed()), last.is_none(), Instant::now());
        let outcome = result.map(|r| r.lines).map_err(|e| e.to_string());
        if last.as_ref() != Some(&outcome) {
            match &outcome {
                Ok(lines) => lines.iter().for_each(|l| println!("wgmesh-cni: {l}")),
                Err(e) => eprintln!("wgmesh-cni: {e} (trying again every {}s)", every.as_secs()),
            }
            last = Some(outcome);
        }
        if let Some(p) = pause {
            eprintln!(
                "wgmesh-cni: the CNI config had to be written again {} times within {}s: another \
                 program keeps rewriting it or removing our copy (Cilium's agent does: chain \
                 wgmesh-cni through that plugin's own configuration instead); next try in {}s",
                FightGuard::REPAIRS,
                FightGuard::WINDOW.as_secs(),
                p.as_secs()
            );
        }
        let until = Instant::now() + pause.unwrap_or(guard.pause);
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("wgmesh-cni: stopped watching; the CNI config keeps its entry");
    ExitCode::SUCCESS
}

/// Backs off from a program that removes our entry as fast as we put it back: two installers
/// rewriting one file every few seconds would change it forever and leave it broken for pods
/// created in between.
struct FightGuard {
    every: std::time::Duration,
    pause: std::time::Duration,
    repairs: Vec<std::time::Instant>,
}

impl FightGuard {
    const REPAIRS: usize = 3;
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
    const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(300);

    fn new(every: std::time::Duration) -> Self {
        Self { every, pause: every, repairs: Vec::new() }
    }

    /// Records a round; returns the pause before the next one when it just grew.
    fn after(&mut self, changed: bool, first: bool, now: std::time::Instant) -> Option<std::time::Duration> {
        if first {
            return None;
        }
        if !changed {
            (self.pause, self.repairs) = (self.every, Vec::new());
            return None;
        }
        self.repairs.retain(|t| now.duration_since(*t) < Self::WINDOW);
        self.repairs.push(now);
        if self.pause > self.every {
            self.pause = (self.pause * 2).min(Self::MAX_PAUSE);
        } else if self.repairs.len() >= Self::REPAIRS {
            self.pause = Self::WINDOW.min(Self::MAX_PAUSE);
        } else {
            return None;
        }
        Some(self.pause)
    }
}

#[cfg(test)]
mod tests {
    use super::FightGuard;
    use std::time::{Duration, Instant};

    #[test]
    fn three_repairs_in_a_minute_back_off_and_a_calm_round_resets() {
        let every = Duration::from_secs(5);
        let mut g = FightGuard::new(every);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(g.after(true, true, at(0)), None, "the first install is not a repair");
        assert_eq!(g.after(true, false, at(5)), None);
        assert_eq!(g.after(true, false, at(10)), None);
        assert_eq!(g.after(true, false, at(15)), Some(Duration::from_secs(60)), "the third repair in a minute");
        assert_eq!(g.after(true, false, at(75)), Some(Duration::from_secs(120)));
        assert_eq!(g.after(true, false, at(195)), Some(Duration::from_secs(240)));
        assert_eq!(g.after(true, false, at(435)), Some(Duration::from_secs(300)), "at most five minutes");
        assert_eq!(g.after(false, false, at(735)), None);
        assert_eq!(g.pause, every, "a round with nothing to do ends the fight");
        // Repairs spread out (an owner upgraded now and then) are no fight.
        for s in [800, 900, 1000, 1100] {
            assert_eq!(g.after(true, false, at(s)), None);
        }
    }
}
