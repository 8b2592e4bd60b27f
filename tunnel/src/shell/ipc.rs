//! The UAPI unix socket at /var/run/wireguard/IFNAME.sock: what `wg` and `wg-quick` talk to.
//! Several operations per connection are served; connections that send nothing are fine.

use super::Engine;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The longest line any valid request has is under 200 bytes: this bounds what one line costs.
const MAX_LINE: u64 = 4096;

pub fn listen(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    // Nobody answered on it (checked by the caller): a stale socket from a crash.
    let _ = std::fs::remove_file(path);
    // Only root may configure the interface: the socket is created 0700 via the umask.
    // SAFETY: umask only swaps the process mask; restored right after bind.
    let old = unsafe { libc::umask(0o077) };
    let l = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let l = l?;
    l.set_nonblocking(true)?;
    Ok(l)
}

pub fn serve(engine: Arc<Engine>, listener: UnixListener) {
    while !engine.stopped() {
        match listener.accept() {
            Ok((stream, _)) => {
                let e = engine.clone();
                std::thread::spawn(move || {
                    if let Err(err) = handle(&e, stream) {
                        tracing::debug!(error = %err, "UAPI connection ended");
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!(error = %e, "UAPI accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle(engine: &Engine, stream: UnixStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    // A line past MAX_LINE ends the connection with -EIO, as wireguard-go's line limit does.
    fn next(r: &mut BufReader<UnixStream>, line: &mut String) -> io::Result<usize> {
        line.clear();
        let n = io::Read::take(&mut *r, MAX_LINE + 1).read_line(line)?;
        if n as u64 > MAX_LINE {
            let mut w: &UnixStream = r.get_ref();
            w.write_all(b"errno=-5\n\n")?;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "UAPI line too long"));
        }
        Ok(n)
    }
    loop {
        if next(&mut r, &mut line)? == 0 {
            return Ok(());
        }
        match line.trim_end_matches('\n') {
            "get=1" => {
                // The request ends with a blank line.
                next(&mut r, &mut line)?;
                w.write_all(engine.uapi_get().as_bytes())?;
            }
            "set=1" => {
                let mut lines = Vec::new();
                loop {
                    if next(&mut r, &mut line)? == 0 || line == "\n" {
                        break;
                    }
                    lines.push(line.trim_end_matches('\n').to_string());
                }
                let errno = engine.uapi_set(lines.iter().map(String::as_str));
                // One write, so a client never sees half a reply.
                w.write_all(format!("errno={errno}\n\n").as_bytes())?;
            }
            "" => {}
            _ => {
                w.write_all(b"errno=-71\n\n")?;
                return Ok(());
            }
        }
    }
}
