//! The readiness contract between the node-agent and this plugin.
//!
//! The node-agent owns `DEFAULT_READINESS_PATH`: it creates it once the node's tunnel is up
//! and its routes and drop rules are in place, and removes it when that stops being true.
//! It may be a regular file, or a unix stream socket the agent listens on; a socket is
//! stronger because a crashed agent cannot leave it "ready" (connect is refused).

use std::{io::ErrorKind, os::fd::AsRawFd, os::unix::fs::FileTypeExt, path::Path};

use nix::{
    errno::Errno,
    sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr},
};

/// Default readiness path; moves to the api crate once the node-agent exists.
pub const DEFAULT_READINESS_PATH: &str = "/run/wgmesh/ready";

/// What the readiness check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not ready, with a sentence saying why.
    NotReady(String),
}

/// Looks at `path` once; never blocks (a socket is connected non-blocking).
pub fn check(path: &Path) -> Readiness {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Readiness::NotReady(format!(
                "the wgmesh node-agent is not ready: {shown} does not exist, so the node's \
                 WireGuard tunnel is not up yet"
            ))
        }
        Err(e) => {
            return Readiness::NotReady(format!(
                "the wgmesh node-agent's readiness path {shown} cannot be read: {e}"
            ))
        }
    };
    if !meta.file_type().is_socket() {
        return Readiness::Ready;
    }
    match connect_unix(path) {
        // EAGAIN means the agent is alive but its backlog is full: it is listening.
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Readiness::Ready,
        Err(e) => Readiness::NotReady(format!(
            "the wgmesh node-agent is not ready: connecting to its socket {shown} failed ({e}); \
             the agent is probably not running"
        )),
    }
}

fn connect_unix(path: &Path) -> Result<(), Errno> {
    let addr = UnixAddr::new(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn missing_file_is_not_ready_and_says_so() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("ready");
        match check(&p) {
            Readiness::NotReady(why) => assert!(why.contains("does not exist"), "{why}"),
            Readiness::Ready => panic!("missing file reported ready"),
        }
        std::fs::write(&p, b"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check(&p), Readiness::Ready);
    }

    #[test]
    fn socket_is_ready_only_while_someone_listens() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("ready.sock");
        let listener = UnixListener::bind(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check(&p), Readiness::Ready);
        drop(listener);
        // The socket file stays behind, as it does when an agent crashes.
        assert!(p.exists());
        assert!(matches!(check(&p), Readiness::NotReady(_)));
    }
}
