//! The I/O shell around the sans-IO core: a TUN device, the UDP sockets, a UAPI socket, real
//! clocks and a handful of threads. All protocol decisions stay in `Device`.

pub mod batch;
pub mod bind;
pub mod gro;
pub mod gso;
pub mod ipc;

use crate::crypto::TAG_LEN;
use crate::device::{Clock, Device};
use crate::messages::{self as msg, DATA_HEADER_LEN};
use crate::uapi::{self, UapiError};
use batch::Batch;
use bind::Bind;
use quinn_udp::RecvMeta;
use std::collections::HashMap;
use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tun_rs::SyncDevice;

/// Packets handled per lock acquisition: the one place that owns the batch size.
const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
/// Headroom before each TUN packet: the virtio-net header the offloads need.
const TUN_OFFSET: usize = tun_rs::VIRTIO_NET_HDR_LEN;
const _: () = assert!(TUN_OFFSET == gro::HDR);
/// A GSO send carries at most this many bytes of UDP payload.
const GSO_MAX_BYTES: usize = 65000;
/// Datagrams per receive call (quinn-udp's recvmmsg batch).
const UDP_BATCH: usize = if quinn_udp::BATCH_SIZE < BATCH { quinn_udp::BATCH_SIZE } else { BATCH };
/// Timers are checked at least this often; deadlines in between are honoured exactly.
const TICK: Duration = Duration::from_millis(100);
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Monotonic time including suspend (CLOCK_BOOTTIME, as the kernel's timers), plus wall time.
pub fn now() -> Clock {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the pointer we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Clock { mono, wall }
}

struct State {
    dev: Device,
    /// Configured port; 0 asks for a random one when the link comes up.
    listen_port: u16,
    fwmark: u32,
    /// When binding was last tried: retried every second while the link is up without a socket.
    bind_tried: std::time::Instant,
}

/// The TUN read side: its buffers, and the token that keeps one reader at a time, so the
/// packets of one read are numbered and sent before the next read starts (per-peer order).
struct TunReader {
    /// One read: the virtio header and a packet or a GSO super-packet of up to 64 KiB.
    read: Vec<u8>,
    /// The segments the super-packets of one round were cut into, each in a slot with room
    /// to be sealed in place.
    arena: Vec<u8>,
    segs: Vec<std::ops::Range<usize>>,
    batch: Batch,
    out: TunWriter,
    /// The device's MTU at the last read, for the segments' padding.
    mtu: Option<usize>,
}

impl Default for TunReader {
    fn default() -> Self {
        Self {
            read: vec![0u8; TUN_OFFSET + 65536],
            // A round's segments (up to BATCH plus one read's) with their room; grown once if not.
            arena: Vec::with_capacity(4 * 65536),
            segs: Vec::with_capacity(64),
            batch: Batch::default(),
            out: TunWriter::default(),
            mtu: None,
        }
    }
}

/// A receive round that wrote at most this many packets to the TUN also reads the TUN once:
/// a reply the kernel queued during that write leaves without waking the TUN thread.
const INLINE_TUN_READ_MAX: usize = 4;
/// A TUN read round of at least this many bytes is bulk sending: the TUN thread takes over.
const BULK_READ: usize = 32 * 1024;
/// The TUN thread hands TUN reading back to the UDP thread after this long without bulk.
const BULK_LINGER: Duration = Duration::from_millis(20);

pub struct Engine {
    pub name: String,
    pub socket_path: PathBuf,
    state: Mutex<State>,
    tun_reader: Mutex<TunReader>,
    /// Who waits on the TUN: under bulk sending its own thread; otherwise the UDP receive
    /// thread, between receives, so a request and its reply wake one thread, not two.
    tun_bulk: AtomicBool,
    tun_thread: std::sync::OnceLock<std::thread::Thread>,
    /// Sticky source: the local address each authenticated remote last wrote to, used as the
    /// source of what we send it (the kernel's endpoint src cache), so multi-homed nodes reply
    /// from the address the peer knows.
    sticky: RwLock<HashMap<SocketAddr, IpAddr>>,
    bind: RwLock<Option<Arc<Bind>>>,
    tun: SyncDevice,
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create TUN device {0}: /dev/net/tun is missing (load the tun module)")]
    TunMissing(String),
    #[error("cannot create TUN device {0}: permission denied (needs root or CAP_NET_ADMIN)")]
    NoPermission(String),
    #[error("cannot create TUN device {0}: {1}")]
    Tun(String, io::Error),
    #[error("interface {0} is already served by another process ({1} answers)")]
    InUse(String, String),
    #[error("cannot create UAPI socket {0}: {1}")]
    Socket(String, io::Error),
}

impl Engine {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking thread would have aborted the data path anyway; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the TUN device and the UAPI socket; returns once both exist.
    pub fn start(name: &str) -> Result<(Arc<Engine>, std::os::unix::net::UnixListener), StartError> {
        let socket_path = PathBuf::from(SOCKET_DIR).join(format!("{name}.sock"));
        // Refuse to fight another live engine for the same name, a hung one too (its accept
        // queue full: a blocking connect would wait for good); clear a stale socket.
        let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .and_then(|s| s.set_nonblocking(true).and_then(|()| s.connect(&socket2::SockAddr::unix(&socket_path)?)));
        if probe.as_ref().map_or_else(|e| e.kind() == io::ErrorKind::WouldBlock, |()| true) {
            return Err(StartError::InUse(name.into(), socket_path.display().to_string()));
        }
        // TSO/USO offloads let one read carry a whole TCP window and one write take a GRO batch.
        let build = |offload: bool| {
            tun_rs::DeviceBuilder::new()
                .name(name)
                .mtu(crate::device::DEFAULT_MTU as u16)
                .offload(offload)
                .inherit_enable_state()
                .build_sync()
        };
        let tun = build(true)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::EINVAL | libc::ENOTSUP) => build(false),
                _ => Err(e),
            })
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) => StartError::TunMissing(name.into()),
                Some(libc::EPERM) | Some(libc::EACCES) => StartError::NoPermission(name.into()),
                _ => StartError::Tun(name.into(), e),
            })?;
        tun.set_nonblocking(true).map_err(|e| StartError::Tun(name.into(), e))?;
        let listener =
            ipc::listen(&socket_path).map_err(|e| StartError::Socket(socket_path.display().to_string(), e))?;
        let engine = Arc::new(Engine {
            name: name.into(),
            socket_path,
            state: Mutex::new(State { dev: Device::default(), listen_port: 0, fwmark: 0, bind_tried: std::time::Instant::now() }),
            tun_reader: Mutex::new(TunReader::default()),
            tun_bulk: AtomicBool::new(false),
            tun_thread: std::sync::OnceLock::new(),
            sticky: RwLock::new(HashMap::new()),
            bind: RwLock::new(None),
            tun,
            stop: Arc::new(AtomicBool::new(false)),
        });
        Ok((engine, listener))
    }

    /// Runs the data path until the interface is deleted, the socket removed, or a signal.
    pub fn run(self: &Arc<Self>, listener: std::os::unix::net::UnixListener) {
        let mut threads = Vec::new();
        // Named, so `top -H` and bench/profile.py tell them apart.
        let mut spawn = |name: &str, f: Box<dyn FnOnce(Arc<Engine>) + Send>| {
            let e = self.clone();
            match std::thread::Builder::new().name(name.into()).spawn(move || f(e)) {
                Ok(t) => {
                    if name == "tun" {
                        let _ = self.tun_thread.set(t.thread().clone());
                    }
                    threads.push(t);
                    true
                }
                Err(err) => {
                    tracing::error!(thread = name, error = %err, "cannot start thread");
                    false
                }
            }
        };
        let started = spawn("uapi", Box::new(move |e| ipc::serve(e, listener)))
            && spawn("tun", Box::new(|e| e.tun_loop()))
            && spawn("udp4", Box::new(|e| e.udp_loop(false)))
            && spawn("udp6", Box::new(|e| e.udp_loop(true)))
            && spawn("timers", Box::new(|e| e.timer_loop()));
        if started {
            self.monitor();
        }
        self.stop.store(true, Ordering::SeqCst);
        for t in threads {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket_path);
        tracing::info!(interface = %self.name, "stopped");
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sends and writes what the core produced, outside the device lock.
    fn flush(&self, batch: &mut Batch, arena: &mut [u8], out: &mut TunWriter) {
        if batch.is_empty() {
            return;
        }
        batch.seal_pending(arena);
        out.write(&self.tun, batch.tun_packets());
        if !batch.forget.is_empty() {
            let mut sticky = self.sticky.write().unwrap_or_else(|e| e.into_inner());
            batch.forget.iter().for_each(|to| _ = sticky.remove(to));
        }
        let bind = self.bind.read().unwrap_or_else(|e| e.into_inner()).clone();
        // the larger count: a socket down to 1 sends its runs one by one itself
        let socks = bind.iter().flat_map(|b| [&b.v4, &b.v6]).flatten();
        let segs = socks.map(|s| s.max_gso_segments()).max().unwrap_or(1).max(1);
        for (to, reply_from, d, seg, ecn) in batch.send_runs(arena, segs, GSO_MAX_BYTES) {
            // No socket (the port taken at link up, or no IPv6 here): nothing left, nothing counted.
            let Some(s) = bind.as_ref().and_then(|b| b.socket_for(to)) else {
                self.lock().dev.unsent(to, d.len());
                continue;
            };
            let learned = || self.sticky.read().unwrap_or_else(|e| e.into_inner()).get(&to).copied();
            let src = reply_from.or_else(learned);
            let mut sent = s.send(to, d, seg, src, ecn);
            let gone =
                |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EINVAL | libc::ENETUNREACH));
            let retry = match &sent {
                Err((left, e)) if src.is_some() && gone(e) => Some(*left),
                _ => None,
            };
            if let Some(left) = retry {
                // The address left the host: forget it and let routing choose for what is left.
                self.sticky.write().unwrap_or_else(|e| e.into_inner()).remove(&to);
                sent = s.send(to, &d[d.len() - left..], seg, None, ecn);
            }
            if let Err((left, e)) = sent {
                tracing::debug!(%to, error = %e, "send failed");
                self.lock().dev.unsent(to, left);
            }
        }
        batch.clear();
    }

    fn tun_loop(&self) {
        let fd = self.tun.as_raw_fd();
        let now = std::time::Instant::now;
        let (mut last_bulk, mut handed_back, mut was_bulk) = (now(), now(), false);
        while !self.stopped() {
            let bound = self.bind.read().unwrap_or_else(|e| e.into_inner()).is_some();
            let bulk = self.tun_bulk.load(Ordering::Acquire);
            if bulk && !was_bulk {
                // A UDP thread saw bulk sending start.
                last_bulk = now();
            }
            was_bulk = bulk;
            // After a hand-back, keep watching until every UDP thread has ended the wait it
            // began before the flag changed (waits last at most RECV_TIMEOUT).
            if !bulk && bound && handed_back.elapsed() > bind::RECV_TIMEOUT {
                std::thread::park_timeout(TICK);
                continue;
            }
            let n = if wait_readable(fd, None, TICK).0 {
                self.read_tun(&mut self.tun_reader.lock().unwrap_or_else(|e| e.into_inner()))
            } else {
                0
            };
            if n >= BULK_READ {
                last_bulk = now();
                self.tun_bulk.store(true, Ordering::Release);
                was_bulk = true;
            } else if was_bulk && last_bulk.elapsed() > BULK_LINGER {
                self.tun_bulk.store(false, Ordering::Release);
                was_bulk = false;
                handed_back = now();
            }
        }
    }

    /// Reads the TUN from a UDP thread, handing it to the TUN thread when it is bulk; false
    /// when another thread holds the TUN reader (it reads what is queued).
    fn read_tun_inline(&self) -> bool {
        let Ok(mut r) = self.tun_reader.try_lock() else { return false };
        if self.read_tun(&mut r) >= BULK_READ && !self.tun_bulk.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.tun_thread.get() {
                t.unpark();
            }
        }
        true
    }

    /// Reads what the TUN holds (non-blocking), seals it and sends it; returns the bytes read.
    fn read_tun(&self, r: &mut TunReader) -> usize {
        let TunReader { read, arena, segs, batch, out, mtu } = r;
        // Segments are cut with room to be sealed where they lie (padded for the MTU the
        // device had at the last read: if it changed, the core's padding differs and the
        // segment is copied instead).
        let room = gso::Room { head: DATA_HEADER_LEN, tail: TAG_LEN, mtu: *mtu };
        // Without offloads there is no virtio header: read behind the same room.
        let skip = if self.tun.tcp_gso() { 0 } else { TUN_OFFSET };
        let (mut bytes, mut packets) = (0, 0);
        // About two super-packets per round, then they are sealed and sent together.
        while packets < BATCH {
            let buf = &mut read[skip..];
            // SAFETY: reads into a buffer we own, at most its length.
            let n = unsafe { libc::read(self.tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "TUN read failed");
                }
                break;
            }
            let len = skip + n as usize;
            let lone = if skip > 0 {
                Some(TUN_OFFSET..len)
            } else {
                match gso::split(&mut read[..len], arena, segs, room) {
                    Ok(lone) => lone,
                    Err(e) => {
                        tracing::debug!(error = %e, "TUN read dropped");
                        continue;
                    }
                }
            };
            let clock = now();
            let mut st = self.lock();
            match lone {
                Some(p) => {
                    st.dev.handle_tun(&read[p], clock, batch);
                    packets += 1;
                }
                None => {
                    for s in segs.iter() {
                        let packet = &arena[s.clone()];
                        st.dev.handle_tun(packet, clock, &mut SealInPlace::new(batch, packet, room.slot(s)));
                    }
                    packets += segs.len();
                }
            }
            *mtu = Some(st.dev.mtu());
            drop(st);
            bytes += len - TUN_OFFSET;
        }
        self.flush(batch, arena, out);
        arena.clear();
        bytes
    }

    fn udp_loop(&self, v6: bool) {
        let mut bufs = vec![vec![0u8; 65536]; UDP_BATCH];
        let mut meta = vec![RecvMeta::default(); bufs.len()];
        let mut batch = Batch::default();
        let mut out = TunWriter::default();
        // (buffer, offset, length, source) of every datagram in a receive batch, and its check.
        let mut segs: Vec<(usize, usize, usize, SocketAddr)> = Vec::with_capacity(BATCH * 64);
        // (remote, local address it wrote to) of authenticated datagrams, for sticky sources.
        let mut learned: Vec<(SocketAddr, IpAddr)> = Vec::with_capacity(BATCH);
        let mut jobs: Vec<Check> = Vec::with_capacity(BATCH * 64);
        // (buffer, start, end) of each packet delivered in place, virtio header room included.
        let mut places: Vec<(usize, usize, usize)> = Vec::with_capacity(BATCH * 64);
        // Those packets as slices: emptied after each round, the allocation kept.
        let mut spare: Vec<&mut [u8]> = Vec::with_capacity(BATCH * 64);
        let mut tun_busy = false;
        while !self.stopped() {
            let bind = self.bind.read().unwrap_or_else(|e| e.into_inner()).clone();
            let Some(sock) = bind.as_ref().and_then(|b| if v6 { b.v6.as_ref() } else { b.v4.as_ref() }) else {
                drop(bind);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            // One UDP thread (IPv4's, when bound) also waits on the TUN unless it is bulk.
            let reads_tun = (!v6 || bind.as_ref().is_some_and(|b| b.v4.is_none()))
                && !self.tun_bulk.load(Ordering::Acquire)
                && !tun_busy;
            let tun_fd = if reads_tun { Some(self.tun.as_raw_fd()) } else { None };
            // After a TUN found busy, look again soon: its reader may have let go with a packet left.
            let wait = if tun_busy { Duration::from_millis(1) } else { bind::RECV_TIMEOUT };
            let (udp_ready, tun_ready) = wait_readable(sock.socket.as_raw_fd(), tun_fd, wait);
            // If another thread holds the reader, it empties the TUN: wait on UDP alone once
            // rather than spin on a TUN that stays readable meanwhile.
            tun_busy = tun_ready && !self.read_tun_inline();
            if !udp_ready {
                continue;
            }
            let n = {
                // On the stack: no allocation per batch.
                let mut it = bufs.iter_mut();
                let mut slices: [IoSliceMut<'_>; UDP_BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(it.next().map_or(&mut [][..], |b| &mut b[..])));
                match sock.recv(&mut slices, &mut meta) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), WouldBlock | TimedOut | Interrupted) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive failed");
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            };
            drop(bind);
            // With GRO one buffer holds several datagrams of `stride` bytes each.
            segs.clear();
            for (i, m) in meta.iter().enumerate().take(n) {
                let stride = m.stride.max(1);
                segs.extend((0..m.len).step_by(stride).map(|o| (i, o, stride.min(m.len - o), m.addr)));
            }
            learned.clear();
            // Three steps, so the AEAD runs outside the device lock: check, open, finish in order.
            let clock = now();
            jobs.clear();
            let st = self.lock();
            for &(i, o, len, _) in &segs {
                let d = &bufs[i][o..o + len];
                jobs.push((msg::classify(d) == Some(msg::Kind::Data)).then(|| st.dev.begin_data(d, clock)));
            }
            drop(st);
            open_all(&mut bufs, &segs, &mut jobs);
            places.clear();
            let mut st = self.lock();
            for (&(i, o, len, from), job) in segs.iter().zip(&jobs) {
                let d = &mut bufs[i][o..o + len];
                let outcome = match job {
                    None => {
                        batch.reply_from = meta[i].dst_ip;
                        let outcome = st.dev.handle_udp(from, d, clock, &mut batch);
                        batch.reply_from = None;
                        outcome
                    }
                    Some(Ok(j)) => {
                        let mut sink = DeliverInPlace::new(&mut batch, d);
                        let outcome = st.dev.finish_data(from, j, d, clock, &mut sink);
                        if let Some((at, n)) = sink.at {
                            places.push((i, o + at - TUN_OFFSET, o + at + n));
                            crate::ip::decap_ecn(&mut d[at..at + n], meta[i].ecn.map_or(0, |e| e as u8));
                        }
                        outcome
                    }
                    Some(Err(o)) => *o,
                };
                if let Some(local) = meta[i].dst_ip.filter(|_| outcome.authenticated()) {
                    if learned.last() != Some(&(from, local)) {
                        learned.push((from, local));
                    }
                }
            }
            drop(st);
            for &(from, local) in &learned {
                self.learn_source(from, local);
            }
            let written = places.len() + batch.delivers().count();
            // Decrypted packets go to the TUN from where they were opened, behind the room
            // their data header leaves for the virtio header.
            let mut pkts = recycle(std::mem::take(&mut spare));
            carve(&mut bufs, places.iter().copied(), |p| pkts.push(p));
            out.write(&self.tun, &mut pkts);
            spare = recycle(pkts);
            self.flush(&mut batch, &mut [], &mut out);
            if (1..=INLINE_TUN_READ_MAX).contains(&written) {
                self.read_tun_inline();
            }
        }
    }

    /// Records that `remote` reached us at `local`; written only when it changed.
    fn learn_source(&self, remote: SocketAddr, local: IpAddr) {
        // A link-local source needs its interface too; without it sendmsg fails with EINVAL,
        // on which quinn-udp turns GSO off for good: let routing choose those.
        if matches!(local, IpAddr::V6(a) if a.is_unicast_link_local()) {
            return;
        }
        if self.sticky.read().unwrap_or_else(|e| e.into_inner()).get(&remote) == Some(&local) {
            return;
        }
        let mut map = self.sticky.write().unwrap_or_else(|e| e.into_inner());
        // Bounded: remotes only enter after authenticating; a roaming storm just starts over.
        if map.len() >= 4096 {
            map.clear();
        }
        map.insert(remote, local);
    }

    fn timer_loop(&self) {
        let mut batch = Batch::default();
        let mut out = TunWriter::default();
        while !self.stopped() {
            let clock = now();
            let next = {
                let mut st = self.lock();
                st.dev.poll(clock, &mut batch);
                st.dev.next_deadline()
            };
            self.flush(&mut batch, &mut [], &mut out);
            let wait = next.map_or(TICK, |d| d.saturating_sub(clock.mono).min(TICK));
            std::thread::sleep(wait.max(Duration::from_millis(1)));
        }
    }

    /// Follows the interface every tick until it is gone or the socket removed.
    fn monitor(&self) {
        while !self.stopped() {
            if let Err(why) = self.follow_link() {
                tracing::info!(interface = %self.name, socket = %self.socket_path.display(), "{why}; exiting");
                return;
            }
            std::thread::sleep(TICK);
        }
    }

    /// Up/down → bind/unbind; MTU → padding bound. Err once the interface or socket is gone.
    fn follow_link(&self) -> Result<(), &'static str> {
        let (mut batch, mut out) = (Batch::default(), TunWriter::default());
        let probe = || -> Result<(bool, Option<usize>), &'static str> {
            let flags = link_flags(&self.name).ok_or("interface deleted")?;
            self.socket_path.exists().then_some(()).ok_or("UAPI socket removed")?;
            Ok((flags & libc::IFF_UP as u32 != 0, self.tun.mtu().ok().map(usize::from)))
        };
        // Probed outside the lock (its syscalls would stall a packet), again under it on a
        // change: with two callers, a stale "down" must not undo a fresh "up".
        let seen = probe()?;
        let mut st = self.lock();
        let (up, mtu) = if seen.0 != st.dev.is_up() || seen.1.is_some_and(|m| m != st.dev.mtu()) { probe()? } else { seen };
        mtu.into_iter().for_each(|m| st.dev.set_mtu(m));
        if up != st.dev.is_up() {
            if up {
                st.bind_tried = std::time::Instant::now();
                if let Err(e) = self.rebind(&mut st, true) {
                    tracing::warn!(port = st.listen_port, error = %e, "cannot bind UDP port; retrying every second");
                }
            } else {
                *self.bind.write().unwrap_or_else(|e| e.into_inner()) = None;
            }
            st.dev.set_up(up, now(), &mut batch);
            tracing::info!(interface = %self.name, up, "link state");
        } else if up
            && st.bind_tried.elapsed() >= Duration::from_secs(1)
            && self.bind.read().unwrap_or_else(|e| e.into_inner()).is_none()
        {
            // The port was taken when the link came up (the kernel would refuse the link):
            // keep trying, so the tunnel comes up once the port is free.
            st.bind_tried = std::time::Instant::now();
            if self.rebind(&mut st, false).is_ok() {
                tracing::info!(port = st.listen_port, "UDP port bound");
            }
        }
        drop(st);
        self.flush(&mut batch, &mut [], &mut out);
        Ok(())
    }

    /// (Re)binds the sockets to the configured port; only while the link is up. `patient`
    /// waits out a socket of ours that is still closing.
    fn rebind(&self, st: &mut State, patient: bool) -> io::Result<()> {
        let current = self.bind.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|b| b.port);
        // Port 0 asks for a new random port, as in the kernel and wireguard-go.
        if current.is_some() && current == Some(st.listen_port) {
            return Ok(());
        }
        // A just-closed socket may linger for one receive timeout; retry briefly.
        let mut tries = 0;
        let bind = loop {
            match Bind::open(st.listen_port, st.fwmark) {
                Ok(b) => break b,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && patient && tries < 5 && current.is_none() => {
                    tries += 1;
                    std::thread::sleep(bind::RECV_TIMEOUT);
                }
                Err(e) => return Err(e),
            }
        };
        if st.listen_port == 0 {
            st.listen_port = bind.port;
        }
        *self.bind.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(bind));
        Ok(())
    }

    /// Serves one `get=1`.
    pub fn uapi_get(&self) -> zeroize::Zeroizing<String> {
        // As after a set: a link just set up reports the port the kernel would have bound.
        let _ = self.follow_link();
        let st = self.lock();
        let port = self.bind.read().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(st.listen_port, |b| b.port);
        uapi::get(&st.dev, port, st.fwmark)
    }

    /// Serves one `set=1`; returns the errno to report (0 on success).
    pub fn uapi_set<'a>(&self, lines: impl IntoIterator<Item = &'a str>) -> i32 {
        let req = match uapi::parse_set(lines).inspect_err(|e| tracing::info!(error = %e, "UAPI set rejected")) {
            Ok(r) => r,
            Err(e) => return e.errno(),
        };
        // A link just set up is up before the next tick: the kernel binds at link-up, so a
        // keepalive in this request (the agent's handshake kick) must find a socket.
        let _ = self.follow_link();
        let mut batch = Batch::default();
        let clock = now();
        let mut st = self.lock();
        // Learned sources no longer hold after a new mark or port (routing may differ) or for
        // an endpoint set anew: the kernel clears them in each case.
        batch.forget.extend(req.peers.iter().filter_map(|p| p.endpoint));
        let bound = || self.bind.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|b| b.port);
        let before = bound();
        if let Some(mark) = req.fwmark {
            self.sticky.write().unwrap_or_else(|e| e.into_inner()).clear();
            st.fwmark = mark;
            if let Some(b) = self.bind.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
                if let Err(e) = b.set_mark(mark) {
                    return UapiError::AddrInUse(e.to_string()).errno();
                }
            }
        }
        if let Some(port) = req.listen_port {
            let old = st.listen_port;
            st.listen_port = port;
            if st.dev.is_up() {
                if let Err(e) = self.rebind(&mut st, true) {
                    st.listen_port = old;
                    tracing::warn!(port, error = %e, "cannot bind UDP port");
                    return UapiError::AddrInUse(e.to_string()).errno();
                }
            }
            if bound() != before {
                self.sticky.write().unwrap_or_else(|e| e.into_inner()).clear();
            }
        }
        let applied = uapi::apply(&mut st.dev, req, clock, &mut batch);
        drop(st);
        self.flush(&mut batch, &mut [], &mut TunWriter::default());
        applied.inspect_err(|e| tracing::info!(error = %e, "UAPI set stopped")).map_or_else(|e| e.errno(), |()| 0)
    }
}

type Check = Option<Result<crate::device::OpenJob, crate::device::Outcome>>;

/// Opens every data message of a receive batch in place, on all cores when the batch is big.
fn open_all(bufs: &mut [Vec<u8>], segs: &[(usize, usize, usize, SocketAddr)], jobs: &mut [Check]) {
    let bytes: usize = segs.iter().map(|s| s.2).sum();
    let open = |(d, job): (&mut [u8], &mut Check)| {
        if let Some(Ok(j)) = job {
            if !crate::keypair::open_data(&j.key, j.counter, d) {
                *job = Some(Err(crate::device::Outcome::Dropped(crate::device::Drop::InvalidAuthentication)));
            }
        }
    };
    let ranges = segs.iter().map(|&(i, o, len, _)| (i, o, o + len));
    let mut opened = 0;
    if bytes >= batch::PARALLEL_MIN_BYTES && batch::parallel_crypto() {
        use rayon::prelude::*;
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(segs.len());
        carve(bufs, ranges, |s| slices.push(s));
        opened = slices.len().min(jobs.len());
        slices.into_par_iter().zip(jobs[..opened].par_iter_mut()).with_min_len(4).for_each(open);
    } else {
        // Each as carve hands it out: no allocation per round, whoever sent the datagrams.
        let mut it = jobs.iter_mut();
        carve(bufs, ranges, |s| if let Some(j) = it.next() { open((s, j)); opened += 1 });
    }
    // Cannot happen with a well-formed list; never let an unopened message count as opened.
    jobs[opened..].iter_mut().for_each(|j| *j = Some(Err(crate::device::Outcome::Dropped(crate::device::Drop::InvalidAuthentication))));
}

/// Hands out the `(buffer, start, end)` ranges of `bufs` as disjoint mutable slices; the
/// ranges must come in buffer order and not overlap (a bad one ends the walk).
fn carve<'a>(bufs: &'a mut [Vec<u8>], ranges: impl Iterator<Item = (usize, usize, usize)>, mut f: impl FnMut(&'a mut [u8])) {
    let mut iter = bufs.iter_mut().enumerate();
    // (buffer index, what is left of it, where that rest starts)
    let mut current: Option<(usize, &'a mut [u8], usize)> = None;
    for (i, start, end) in ranges {
        while current.as_ref().is_none_or(|c| c.0 != i) {
            let Some((bi, b)) = iter.next() else { return };
            current = Some((bi, &mut b[..], 0));
        }
        let Some((bi, buf, at)) = current.take() else { return };
        if start < at || end < start || end - at > buf.len() {
            return;
        }
        let (_, tail) = buf.split_at_mut(start - at);
        let (piece, tail) = tail.split_at_mut(end - start);
        f(piece);
        current = Some((bi, tail, end));
    }
}

/// An emptied list of slices, free to borrow anew; collected in place, so no allocation.
#[allow(clippy::unnecessary_filter_map, reason = "filter would keep the old lifetime")]
fn recycle<'b>(mut v: Vec<&mut [u8]>) -> Vec<&'b mut [u8]> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// The output `finish_data` writes into: a delivered packet that lies inside its datagram
/// (where it was opened) is only located, everything else goes to the batch.
struct DeliverInPlace<'a> {
    batch: &'a mut Batch,
    /// Address and length of the datagram.
    datagram: (usize, usize),
    /// Offset and length of the packet delivered in place.
    at: Option<(usize, usize)>,
}

impl<'a> DeliverInPlace<'a> {
    fn new(batch: &'a mut Batch, datagram: &[u8]) -> Self {
        Self { batch, datagram: (datagram.as_ptr() as usize, datagram.len()), at: None }
    }
}

impl crate::device::Output for DeliverInPlace<'_> {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.batch.send(to, datagram);
    }
    fn reply(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.batch.reply(to, datagram);
    }
    fn forget_source(&mut self, to: SocketAddr) {
        self.batch.forget_source(to);
    }
    fn send_data(&mut self, to: SocketAddr, job: crate::device::SealJob<'_>) {
        self.batch.send_data(to, job);
    }
    fn deliver(&mut self, packet: &[u8]) {
        let (base, len) = self.datagram;
        let at = (packet.as_ptr() as usize).wrapping_sub(base);
        // Room for the virtio header in front is what lets it be written from there.
        if self.at.is_none() && at >= TUN_OFFSET && at <= len && packet.len() <= len - at {
            self.at = Some((at, packet.len()));
        } else {
            self.batch.deliver(packet);
        }
    }
}

/// The output `handle_tun` writes into for a segment cut with room around it: if the core
/// seals exactly that segment, with the padding the slot has, it is sealed where it lies;
/// anything else (staged packets, another MTU) goes to the batch as usual.
struct SealInPlace<'a> {
    batch: &'a mut Batch,
    /// Address and length of the segment.
    segment: (usize, usize),
    slot: Option<std::ops::Range<usize>>,
}

impl<'a> SealInPlace<'a> {
    fn new(batch: &'a mut Batch, segment: &[u8], slot: std::ops::Range<usize>) -> Self {
        Self { batch, segment: (segment.as_ptr() as usize, segment.len()), slot: Some(slot) }
    }
}

impl crate::device::Output for SealInPlace<'_> {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.batch.send(to, datagram);
    }
    fn reply(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.batch.reply(to, datagram);
    }
    fn forget_source(&mut self, to: SocketAddr) {
        self.batch.forget_source(to);
    }
    fn send_data(&mut self, to: SocketAddr, job: crate::device::SealJob<'_>) {
        let exact = |slot: &mut std::ops::Range<usize>| {
            self.segment == (job.plaintext.as_ptr() as usize, job.plaintext.len())
                && slot.len() == crate::messages::DATA_OVERHEAD + job.padded
        };
        match self.slot.take_if(exact) {
            Some(slot) => self.batch.send_data_in_arena(to, slot, job),
            None => self.batch.send_data(to, job),
        }
    }
    fn deliver(&mut self, packet: &[u8]) {
        self.batch.deliver(packet);
    }
}

/// Writes decrypted packets to the TUN, coalescing TCP segments of a flow (GRO) when the
/// device has offloads; the list of writes is reused.
#[derive(Default)]
struct TunWriter {
    writes: Vec<gro::Write>,
}

impl TunWriter {
    /// Writes `packets`, each behind `TUN_OFFSET` bytes of room for the virtio header.
    fn write<P: AsMut<[u8]> + AsRef<[u8]>>(&mut self, tun: &SyncDevice, packets: &mut [P]) {
        // Without the virtio header (offloads refused) packets go out one by one, bare.
        let bare = !tun.tcp_gso();
        if bare {
            self.writes.clear();
            self.writes.extend((0..packets.len()).map(|first| gro::Write { first, count: 1, skip: 0 }));
        } else {
            gro::coalesce(packets, &mut self.writes);
        }
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; gro::MAX_SEGMENTS];
        for w in &self.writes {
            let mut n = 0;
            for (k, part) in w.parts(packets).enumerate().take(iov.len()) {
                let part = if bare && k == 0 { part.get(TUN_OFFSET..).unwrap_or(&[]) } else { part };
                iov[k] = libc::iovec { iov_base: part.as_ptr() as *mut libc::c_void, iov_len: part.len() };
                n = k + 1;
            }
            // SAFETY: the iovecs point into `packets`, borrowed for the call; writev only reads.
            // A full queue drops, as a NIC would.
            let r = unsafe { libc::writev(tun.as_raw_fd(), iov.as_ptr(), n as libc::c_int) };
            if r < 0 {
                tracing::debug!(error = %io::Error::last_os_error(), "TUN write failed");
            }
        }
    }
}

/// Waits until `a` or (when given) `b` is readable; says which are.
fn wait_readable(a: i32, b: Option<i32>, timeout: Duration) -> (bool, bool) {
    let poll = |fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let mut p = [poll(a), poll(b.unwrap_or(-1))];
    let n = if b.is_some() { 2 } else { 1 };
    // SAFETY: pollfds we own, for the duration of the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), n, timeout.as_millis() as i32) };
    let ready = |p: &libc::pollfd| r > 0 && p.revents & libc::POLLIN != 0;
    (ready(&p[0]), ready(&p[1]))
}

/// The interface flags, or `None` once the interface no longer exists.
fn link_flags(name: &str) -> Option<u32> {
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a throwaway datagram socket and an ifreq we own; both closed/dropped below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Some(0);
        }
        let r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        libc::close(fd);
        (r == 0).then_some(req.ifr_ifru.ifru_flags as u16 as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Output;

    #[global_allocator]
    static COUNTING: wgmesh_leakcheck::Counting = wgmesh_leakcheck::Counting;

    #[test]
    fn a_receive_round_allocates_nothing_and_never_counts_an_unopened_datagram_as_opened() {
        use crate::device::{Drop, Outcome};
        let from: SocketAddr = "10.0.0.1:51820".parse().unwrap();
        let mut bufs = vec![vec![0u8; 256]; 2];
        // Handshakes (no job) and data the core already refused: nothing to open.
        let segs = [(0, 0, 100, from), (0, 100, 100, from), (1, 0, 148, from)];
        let mut jobs: Vec<Check> = vec![None, Some(Err(Outcome::Dropped(Drop::UnknownIndex))), None];
        let ((), n) = wgmesh_leakcheck::allocations(|| open_all(&mut bufs, &segs, &mut jobs));
        assert_eq!(n, 0, "allocations in one receive round");
        assert!(matches!(jobs[..], [None, Some(Err(Outcome::Dropped(Drop::UnknownIndex))), None]));
        // A range carve cannot hand out (it overlaps the one before): it and all after it fail.
        let segs = [(0, 0, 100, from), (0, 50, 100, from), (1, 0, 148, from)];
        let mut jobs: Vec<Check> = vec![None, None, None];
        open_all(&mut bufs, &segs, &mut jobs);
        let failed = |j: &Check| matches!(j, Some(Err(Outcome::Dropped(Drop::InvalidAuthentication))));
        assert!(jobs[0].is_none() && jobs[1..].iter().all(failed));
    }

    #[test]
    fn the_list_of_delivered_packets_is_reused_without_an_allocation() {
        let (mut a, mut b) = ([1u8; 8], [2u8; 8]);
        let mut v: Vec<&mut [u8]> = Vec::with_capacity(64);
        v.extend([&mut a[..], &mut b[..]]);
        let (ptr, cap) = (v.as_ptr() as usize, v.capacity());
        let (v, n) = wgmesh_leakcheck::allocations(|| recycle(v));
        assert_eq!((n, v.len(), v.capacity(), v.as_ptr() as usize), (0, 0, cap, ptr));
    }

    #[test]
    fn carve_hands_out_the_ranges_and_stops_at_a_bad_one() {
        let mut bufs = vec![vec![0u8; 10], vec![1u8; 10], vec![2u8; 10]];
        let mut got = Vec::new();
        carve(&mut bufs, [(0, 2, 4), (0, 4, 10), (2, 0, 3)].into_iter(), |s| got.push(s.to_vec()));
        assert_eq!(got, vec![vec![0; 2], vec![0; 6], vec![2; 3]]);
        for bad in [[(0, 5, 6), (0, 4, 6)], [(0, 0, 1), (1, 3, 11)], [(0, 0, 1), (0, 3, 2)]] {
            let mut n = 0;
            carve(&mut bufs, bad.into_iter(), |_| n += 1);
            assert_eq!(n, 1, "overlapping, too long or reversed: {bad:?}");
        }
    }

    #[test]
    fn a_packet_inside_its_datagram_is_located_anything_else_copied() {
        let datagram = vec![7u8; 100];
        let mut batch = Batch::default();
        let mut sink = DeliverInPlace::new(&mut batch, &datagram);
        sink.deliver(&datagram[16..80]);
        assert_eq!(sink.at, Some((16, 64)));
        // Without room for the virtio header in front, or from elsewhere: copied.
        let mut sink = DeliverInPlace::new(&mut batch, &datagram);
        sink.deliver(&datagram[4..20]);
        sink.deliver(&[1, 2, 3]);
        assert_eq!(sink.at, None);
        assert_eq!(batch.delivers().collect::<Vec<_>>(), vec![&datagram[4..20], &[1u8, 2, 3][..]]);
    }

    #[test]
    fn a_segment_with_room_is_sealed_where_it_lies_into_the_same_datagram() {
        let to: SocketAddr = "10.0.0.1:51820".parse().unwrap();
        let key = std::sync::Arc::new(crate::crypto::cipher(&[7; 32]));
        let (plain, padded) = (vec![0x45u8; 1000], 1008);
        fn job<'a>(key: &'a std::sync::Arc<crate::crypto::Aead>, p: &'a [u8], padded: usize) -> crate::device::SealJob<'a> {
            crate::device::SealJob { key, receiver: 9, counter: 3, plaintext: p, padded }
        }
        // The copy path: plaintext from anywhere.
        let mut copied = Batch::default();
        copied.send_data(to, job(&key, &plain, padded));
        copied.seal_pending(&mut []);
        let expected: Vec<u8> = copied.send_runs(&[], 64, 65000).flat_map(|(_, _, d, _, _)| d.to_vec()).collect();
        // The in-place path: a slot of header room, the segment, zero padding and tag room.
        let mut arena = [vec![0xaa; 5], vec![0; 16], plain.clone(), vec![0; 8 + 16]].concat();
        let seg = 21..1021;
        let mut batch = Batch::default();
        let mut out = SealInPlace::new(&mut batch, &arena[seg.clone()], 5..1045);
        out.send_data(to, job(&key, &arena[seg.clone()], padded));
        assert!(out.slot.is_none(), "taken");
        assert_eq!(batch.send_runs(&arena, 64, 65000).map(|(_, _, d, _, _)| d.as_ptr()).next(), Some(arena[5..].as_ptr()), "nothing copied");
        batch.seal_pending(&mut arena);
        let runs: Vec<_> = batch.send_runs(&arena, 64, 65000).map(|(t, _, d, n, _)| (t, d.to_vec(), n)).collect();
        assert_eq!(runs, vec![(to, expected.clone(), expected.len())], "the same datagram, sent from the arena");
        // A slot that does not fit the padding the core chose, or another packet: copied.
        let arena = [vec![0; 16], plain.clone(), vec![0; 8 + 16]].concat();
        for (slot, p) in [(0..1039, &arena[16..1016]), (0..1040, &plain[..])] {
            let mut batch = Batch::default();
            SealInPlace::new(&mut batch, &arena[16..1016], slot).send_data(to, job(&key, p, padded));
            let sent: Vec<_> = batch.send_runs(&[], 64, 65000).map(|(_, _, d, _, _)| d.len()).collect();
            assert_eq!(sent, vec![expected.len()], "copied into the batch");
        }
    }
}
