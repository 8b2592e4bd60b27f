//! The engine is a separate process (`wgmesh-tunnel IFNAME`, or any wireguard-go compatible
//! one): the agent attaches to a running one or starts it, and never carries packets itself.
//! A started engine daemonizes into its own session, so it outlives the agent: restarting the
//! agent does not interrupt traffic.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::uapi_client::UapiClient;

/// Whether the agent may start the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineMode {
    /// Attach if the interface's socket answers, otherwise start the engine binary.
    Auto,
    /// Only attach (the engine runs in its own container); wait while it is absent.
    Attach,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no engine answers on {0} (engine mode attach: waiting for it)")]
    Absent(PathBuf),
    #[error("cannot start engine {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("engine {binary} {ifname} failed to start ({status})")]
    Failed {
        binary: PathBuf,
        ifname: String,
        status: std::process::ExitStatus,
    },
    #[error("the engine failed to start {0} times in a row; trying again with backoff (at most every 30 s)")]
    Backoff(u32),
    #[error("an engine holds {0} but accepts no connection (hung?); not starting another beside it")]
    NotAccepting(PathBuf),
}

/// After a failed start the next waits 0.5 s, then 1 s, 2 s, ... up to 30 s: a broken engine
/// is not re-spawned four times a second.
fn backoff(failures: u32) -> std::time::Duration {
    (std::time::Duration::from_millis(250) * 2u32.saturating_pow(failures.min(7))).min(std::time::Duration::from_secs(30))
}

/// Finds the engine binary: an explicit path, else `wgmesh-tunnel` next to our own
/// executable (how the image and `cargo build` lay them out), else from `PATH`.
pub fn default_binary() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("wgmesh-tunnel")))
        .filter(|p| p.exists());
    sibling.unwrap_or_else(|| PathBuf::from("wgmesh-tunnel"))
}

/// Attaches to or starts the engine of one interface.
pub struct Engine {
    ifname: String,
    binary: PathBuf,
    mode: EngineMode,
    client: UapiClient,
    /// Starts that failed in a row, and when the next may be tried.
    failures: std::cell::Cell<(u32, Option<std::time::Instant>)>,
}

impl Engine {
    pub fn new(ifname: &str, binary: &Path, mode: EngineMode) -> Self {
        Engine {
            ifname: ifname.to_owned(),
            binary: binary.to_owned(),
            mode,
            client: UapiClient::new(ifname),
            failures: std::cell::Cell::new((0, None)),
        }
    }

    pub fn client(&self) -> &UapiClient {
        &self.client
    }

    /// Makes sure an engine serves the interface; returns true if it was started now.
    pub fn ensure(&self) -> Result<bool, EngineError> {
        match self.client.reachable() {
            Ok(()) => {
                self.failures.set((0, None));
                return Ok(false);
            }
            // a second engine would wait on the same socket for good
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(EngineError::NotAccepting(self.client.path().to_owned()))
            }
            Err(_) => {}
        }
        if self.mode == EngineMode::Attach {
            return Err(EngineError::Absent(self.client.path().to_owned()));
        }
        let (failures, next) = self.failures.get();
        if next.is_some_and(|t| std::time::Instant::now() < t) {
            return Err(EngineError::Backoff(failures));
        }
        let started = self.start();
        match &started {
            Ok(_) => self.failures.set((0, None)),
            Err(_) => self.failures.set((failures + 1, Some(std::time::Instant::now() + backoff(failures + 1)))),
        }
        started
    }

    fn start(&self) -> Result<bool, EngineError> {
        // the engine daemonizes and returns once its TUN and socket exist (wireguard-go's way)
        let status = Command::new(&self.binary)
            .arg(&self.ifname)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|source| EngineError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if !status.success() {
            return Err(EngineError::Failed {
                binary: self.binary.clone(),
                ifname: self.ifname.clone(),
                status,
            });
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_failing_engine_is_started_again_with_backoff_not_every_tick() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bin, count) = (dir.path().join("engine"), dir.path().join("starts"));
        crate::test_util::script(&bin, &format!("#!/bin/sh\necho start >> {}\nexit 1\n", count.display()));
        let e = Engine::new(&format!("wgb{}", std::process::id() % 100_000), &bin, EngineMode::Auto);
        // The agent's ticks, every 50 ms for a second.
        let t = Instant::now();
        let mut errors = Vec::new();
        while t.elapsed() < Duration::from_secs(1) {
            errors.push(e.ensure().expect_err("the engine never starts").to_string());
            std::thread::sleep(Duration::from_millis(50));
        }
        let starts = std::fs::read_to_string(&count).unwrap_or_default().lines().count();
        assert!((1..=3).contains(&starts), "{starts} starts in a second");
        assert!(errors[0].contains("failed to start (exit status: 1)"), "{errors:?}");
        assert!(errors.iter().any(|m| m.contains("with backoff")), "{errors:?}");
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn beside_a_hung_engine_no_second_one_is_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bin, count) = (dir.path().join("engine"), dir.path().join("starts"));
        crate::test_util::script(&bin, &format!("#!/bin/sh\necho start >> {}\n", count.display()));
        let e = Engine::new(&format!("wgh{}", std::process::id() % 100_000), &bin, EngineMode::Auto);
        // an engine holds the socket, but its accept queue is full
        let path = e.client().path().to_owned();
        std::fs::create_dir_all(path.parent().expect("socket dir")).expect("socket dir");
        let _ = std::fs::remove_file(&path);
        let _hung = crate::test_util::hung_listener(&path);
        let r = e.ensure();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(r, Err(EngineError::NotAccepting(_))), "{r:?}");
        assert!(!count.exists(), "a second engine was started");
    }
}
