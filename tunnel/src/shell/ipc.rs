//! The UAPI unix socket at /var/run/wireguard/IFNAME.sock: what `wg` and `wg-quick` talk to.
//! Several operations per connection are served; connections that send nothing are fine.

use super::Engine;
use std::io::{self, Read, Write};
use zeroize::Zeroizing;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The longest line any valid request has is under 200 bytes: this bounds what one line costs.
const MAX_LINE: usize = 4096;

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
            // Woken by a connection, so `wg` is answered at once, or by the tick, to see a stop.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => _ = super::wait_readable(listener.as_raw_fd(), None, super::TICK),
            Err(e) => {
                tracing::warn!(error = %e, "UAPI accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Request lines, read through one buffer that is wiped on drop: `set` lines carry private and
/// preshared keys, and nothing here grows (a growth would free a copy of them unwiped).
struct Lines {
    stream: UnixStream,
    buf: Zeroizing<Vec<u8>>,
    start: usize,
    end: usize,
}

impl Lines {
    /// The next line without its `\n` (a last one may lack it); `None` at the end. A line past
    /// MAX_LINE ends the connection with -EIO, as wireguard-go's line limit does.
    fn next(&mut self) -> io::Result<Option<Zeroizing<String>>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            let newline = pending.iter().position(|&b| b == b'\n');
            if newline.unwrap_or(pending.len()) >= MAX_LINE {
                (&self.stream).write_all(b"errno=-5\n\n")?;
                return Err(io::Error::new(io::ErrorKind::InvalidData, "UAPI line too long"));
            }
            if let Some(i) = newline {
                let line = std::str::from_utf8(&pending[..i]).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
                self.start += i + 1;
                return Ok(Some(Zeroizing::new(line.to_owned())));
            }
            self.buf.copy_within(self.start..self.end, 0);
            (self.end, self.start) = (self.end - self.start, 0);
            let n = match (&self.stream).read(&mut self.buf[self.end..]) { Err(e) if e.kind() == io::ErrorKind::Interrupted => continue, r => r? };
            if n == 0 && self.end == 0 {
                return Ok(None);
            }
            if n == 0 {
                // a last line without its '\n'
                self.buf[self.end] = b'\n';
            }
            self.end += n.max(1);
        }
    }
}

fn handle(engine: &Engine, stream: UnixStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = Lines { stream, buf: Zeroizing::new(vec![0; 2 * MAX_LINE]), start: 0, end: 0 };
    while let Some(line) = r.next()? {
        match line.as_str() {
            "get=1" => {
                // The request ends with a blank line.
                r.next()?;
                w.write_all(engine.uapi_get().as_bytes())?;
            }
            "set=1" => {
                let mut lines = Vec::new();
                while let Some(l) = r.next()?.filter(|l| !l.is_empty()) {
                    lines.push(l);
                }
                let errno = engine.uapi_set(lines.iter().map(|l| l.as_str()));
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
    Ok(())
}
