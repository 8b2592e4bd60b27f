//! wgmesh node agent: turns the mesh's desired state into a configured `wgmesh-tunnel`
//! (over UAPI), an interface, routes and fail-closed drops, and a readiness signal for the CNI
//! plugin. Pure functions (`plan`, `routes`, `mesh_input`) decide; thin modules do the I/O.

pub mod agent;
pub use wgmesh_atomicfile as atomic;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod engine;
pub mod guard;
pub mod http;
pub mod key;
pub mod mesh_input;
pub mod metrics;
pub mod netlink;
pub mod plan;
pub mod psk;
pub mod readiness;
pub mod resolve;
pub mod routes;
pub mod source_file;
pub mod source_kube;
pub mod uapi_client;

/// For unit tests that run a fake program.
#[cfg(test)]
pub(crate) mod test_util {
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Writes an executable script at `path` from a child process: a file this process held
    /// open for writing could be inherited by another test thread's fork, and exec says ETXTBSY.
    pub fn script(path: &Path, body: &str) {
        let mut sh = Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path)
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh");
        sh.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("write script");
        assert!(sh.wait().expect("sh").success(), "cannot write {}", path.display());
    }

    /// A unix socket at `path` that accepts nothing, its accept queue full: a hung engine.
    /// Keep both values alive while the test needs it hung.
    pub fn hung_listener(path: &Path) -> (socket2::Socket, Vec<socket2::Socket>) {
        use socket2::{Domain, SockAddr, Socket, Type};
        let addr = SockAddr::unix(path).expect("address");
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
        listener.bind(&addr).expect("bind");
        listener.listen(0).expect("listen");
        let mut queued = Vec::new();
        loop {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            if s.connect(&addr).is_err() {
                return (listener, queued);
            }
            queued.push(s);
            assert!(queued.len() < 4096, "the queue never filled");
        }
    }
}
