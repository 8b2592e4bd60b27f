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
}

impl Engine {
    pub fn new(ifname: &str, binary: &Path, mode: EngineMode) -> Self {
        Engine {
            ifname: ifname.to_owned(),
            binary: binary.to_owned(),
            mode,
            client: UapiClient::new(ifname),
        }
    }

    pub fn client(&self) -> &UapiClient {
        &self.client
    }

    /// Makes sure an engine serves the interface; returns true if it was started now.
    pub fn ensure(&self) -> Result<bool, EngineError> {
        if self.client.alive() {
            return Ok(false);
        }
        if self.mode == EngineMode::Attach {
            return Err(EngineError::Absent(self.client.path().to_owned()));
        }
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
