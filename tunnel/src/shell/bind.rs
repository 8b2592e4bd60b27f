//! The outer UDP sockets: one IPv4 and one IPv6 socket on the same port, with fwmark, large
//! buffers and batched receive (recvmmsg and GRO through quinn-udp).

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Big enough to ride out bursts at line rate (wireguard-go uses 7 MiB too).
const SOCKET_BUFFER: usize = 7 << 20;
/// How long a receive thread waits for readiness before it re-checks for shutdown or rebind.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

pub struct Socket4or6 {
    pub socket: UdpSocket,
    state: UdpSocketState,
    /// Datagrams per GSO send: the kernel's probe, 1 once a send from no chosen source was
    /// refused. Not quinn-udp's count, which any EINVAL ends for good, a stale source too.
    gso: AtomicUsize,
}

impl Socket4or6 {
    pub fn recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.state.recv(UdpSockRef::from(&self.socket), bufs, meta)
    }
    /// Sends `bytes` as datagrams of `segment` bytes each (one GSO send when there are several),
    /// from local address `src` when given (IP_PKTINFO), with outer TOS byte `tos`. An error
    /// comes with the bytes that did not leave: all of a GSO send, the rest of one by one.
    pub fn send(&self, to: SocketAddr, bytes: &[u8], segment: usize, src_ip: Option<IpAddr>, tos: u8) -> Result<(), (usize, io::Error)> {
        // A DSCP (a handshake's) needs the whole TOS byte; quinn-udp sets only the ECN field.
        if tos & !3 != 0 {
            return one_by_one(bytes, segment, |d| send_tos(&self.socket, to, d, src_ip, tos));
        }
        let ecn = quinn_udp::EcnCodepoint::from_bits(tos);
        let send = |contents: &[u8], segment_size| {
            let t = Transmit { destination: to, ecn, contents, segment_size, src_ip };
            self.state.try_send(UdpSockRef::from(&self.socket), &t)
        };
        if bytes.len() > segment && self.gso.load(Ordering::Relaxed) > 1 {
            match send(bytes, Some(segment)) {
                // EIO: no checksum offload; EMSGSIZE or EINVAL: segments the link cannot carry
                // whole, or (EINVAL) a stale chosen source, retried without: GSO off when sure.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EMSGSIZE)) || (src_ip.is_none() && e.raw_os_error() == Some(libc::EINVAL)) => self.gso.store(1, Ordering::Relaxed),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                r => return r.map_err(|e| (bytes.len(), e)),
            }
        }
        one_by_one(bytes, segment, |d| send(d, None))
    }
    pub fn max_gso_segments(&self) -> usize {
        self.gso.load(Ordering::Relaxed)
    }
}

/// One datagram with a whole TOS byte: sendmsg with IP_TOS or IPV6_TCLASS, and the source as
/// IP_PKTINFO or IPV6_PKTINFO when given, as quinn-udp sets it.
fn send_tos(s: &UdpSocket, to: SocketAddr, d: &[u8], src: Option<IpAddr>, tos: u8) -> io::Result<()> {
    let addr = socket2::SockAddr::from(to);
    let mut iov = libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() };
    let mut control = [0u64; 12];
    // SAFETY: msghdr is plain data, all zero when empty.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    (msg.msg_name, msg.msg_namelen) = (addr.as_ptr() as *mut libc::c_void, addr.len());
    (msg.msg_iov, msg.msg_iovlen) = (&mut iov, 1);
    (msg.msg_control, msg.msg_controllen) = (control.as_mut_ptr().cast(), size_of_val(&control));
    let (level, tos_type) = if to.is_ipv4() { (libc::IPPROTO_IP, libc::IP_TOS) } else { (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) };
    // SAFETY: both headers and their data fit in `control` (CMSG_SPACE 24, then at most 40, of
    // 96 bytes), whose size msg_controllen gives while they are written; the kernel reads it in the call.
    unsafe {
        let put = |c: *mut libc::cmsghdr, level, kind, len: usize| {
            ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) = (level, kind, libc::CMSG_LEN(len as u32) as usize);
            libc::CMSG_SPACE(len as u32) as usize
        };
        let c = libc::CMSG_FIRSTHDR(&msg);
        let mut len = put(c, level, tos_type, 4);
        libc::CMSG_DATA(c).cast::<i32>().write_unaligned(i32::from(tos));
        let c = libc::CMSG_NXTHDR(&msg, c);
        match src {
            Some(IpAddr::V4(a)) if to.is_ipv4() => {
                len += put(c, libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>());
                let a = libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) };
                let info = libc::in_pktinfo { ipi_ifindex: 0, ipi_spec_dst: a, ipi_addr: libc::in_addr { s_addr: 0 } };
                libc::CMSG_DATA(c).cast::<libc::in_pktinfo>().write_unaligned(info);
            }
            Some(IpAddr::V6(a)) if to.is_ipv6() => {
                len += put(c, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>());
                let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: a.octets() }, ipi6_ifindex: 0 };
                libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>().write_unaligned(info);
            }
            _ => {}
        }
        msg.msg_controllen = len;
        if libc::sendmsg(s.as_raw_fd(), &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends each `segment` bytes of `bytes` in turn; on an error, the bytes from there on.
fn one_by_one(bytes: &[u8], segment: usize, mut send: impl FnMut(&[u8]) -> io::Result<()>) -> Result<(), (usize, io::Error)> {
    bytes.chunks(segment).enumerate().try_for_each(|(i, d)| send(d).map_err(|e| (bytes.len() - i * segment, e)))
}

pub struct Bind {
    pub v4: Option<Socket4or6>,
    pub v6: Option<Socket4or6>,
    pub port: u16,
}

fn set_int_opt(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a live i32 of the size given.
    let r = unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), size_of::<i32>() as u32) };
    (r == 0).then_some(()).ok_or_else(io::Error::last_os_error)
}

fn open(addr: SocketAddr, fwmark: u32) -> io::Result<Socket4or6> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if fwmark != 0 {
        s.set_mark(fwmark)?;
    }
    // The FORCE variants pass the sysctl limits when we have CAP_NET_ADMIN.
    let fd = s.as_raw_fd();
    if set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCKET_BUFFER as i32).is_err() {
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCKET_BUFFER as i32).is_err() {
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    }
    s.bind(&addr.into())?;
    // Non-blocking: recvmmsg on a blocking socket would wait to fill the whole batch.
    s.set_nonblocking(true)?;
    let socket: UdpSocket = s.into();
    let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
    // As the kernel's WireGuard (df=0): a datagram larger than the link is fragmented, not
    // refused. quinn-udp has just set path-MTU probing and IPV6_DONTFRAG; undo both.
    let fd = socket.as_raw_fd();
    if addr.is_ipv4() {
        set_int_opt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT)?;
    } else {
        set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DONT)?;
        set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0)?;
    }
    let gso = AtomicUsize::new(state.max_gso_segments());
    Ok(Socket4or6 { socket, state, gso })
}

impl Bind {
    /// Binds both families to `port` (0: a random port, shared by both).
    pub fn open(port: u16, fwmark: u32) -> io::Result<Bind> {
        let mut last_err = None;
        // With port 0 the v6 socket may find the v4 port taken; try a few random ports.
        for _ in 0..(if port == 0 { 10 } else { 1 }) {
            let v4 = match open(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), fwmark) {
                Ok(s) => s,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let bound = v4.socket.local_addr()?.port();
            match open(SocketAddr::from((Ipv6Addr::UNSPECIFIED, bound)), fwmark) {
                Ok(v6) => return Ok(Bind { v4: Some(v4), v6: Some(v6), port: bound }),
                // No IPv6 on this host: run IPv4 only.
                Err(e)
                    if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                        || e.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
                {
                    return Ok(Bind { v4: Some(v4), v6: None, port: bound })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
    }

    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        for s in [&self.v4, &self.v6].into_iter().flatten() {
            socket2::SockRef::from(&s.socket).set_mark(mark)?;
        }
        Ok(())
    }

    pub fn socket_for(&self, to: SocketAddr) -> Option<&Socket4or6> {
        if to.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_send_one_by_one_that_fails_reports_the_bytes_that_did_not_leave() {
        let mut sent = 0;
        let send = |_: &[u8]| {
            sent += 1;
            if sent == 3 { Err(std::io::Error::other("no buffer")) } else { Ok(()) }
        };
        let r = super::one_by_one(&[0u8; 450], 100, send);
        assert_eq!(r.map_err(|(left, _)| left), Err(250), "two datagrams left, the third and the rest did not");
        assert!(super::one_by_one(&[0u8; 450], 100, |_| Ok(())).is_ok());
    }
}
