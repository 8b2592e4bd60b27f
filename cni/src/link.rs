//! Reading and setting an interface's MTU and driver with the classic interface ioctls.
//!
//! An ioctl acts on the network namespace its socket was created in, so a `LinkSocket`
//! made inside the pod's netns (see `netns.rs`) reaches the pod's interfaces, with no
//! netlink library and no async runtime.

use std::{
    ffi::c_char,
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use nix::{
    errno::Errno,
    sys::socket::{socket, AddressFamily, SockFlag, SockType},
};

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` from <linux/ethtool.h>; libc does not carry it.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// A socket that carries interface ioctls into the netns it was created in.
pub struct LinkSocket(OwnedFd);

impl LinkSocket {
    /// Opens the socket in the calling thread's current netns.
    pub fn new() -> io::Result<Self> {
        // AF_UNIX exists in every netns, even one with IPv4 disabled.
        socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map(Self)
        .map_err(io::Error::from)
    }

    /// The interface's MTU; `ErrorKind::NotFound` when no such interface exists here.
    pub fn mtu(&self, name: &str) -> io::Result<u32> {
        let mut req = ifreq(name)?;
        self.ioctl(libc::SIOCGIFMTU, &mut req)?;
        // SAFETY: SIOCGIFMTU filled the ifru_mtu member of the union.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        u32::try_from(mtu).map_err(|_| io::Error::other(format!("negative MTU {mtu}")))
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> io::Result<()> {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_mtu = i32::try_from(mtu)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "MTU out of range"))?;
        self.ioctl(libc::SIOCSIFMTU, &mut req)
    }

    /// The kernel driver name (`veth`, `bridge`, ...), as `ethtool -i` shows it.
    pub fn driver(&self, name: &str) -> io::Result<String> {
        let mut info = EthtoolDrvinfo {
            cmd: ETHTOOL_GDRVINFO,
            driver: [0; 32],
            version: [0; 32],
            fw_version: [0; 32],
            bus_info: [0; 32],
            erom_version: [0; 32],
            reserved2: [0; 12],
            n_priv_flags: 0,
            n_stats: 0,
            testinfo_len: 0,
            eedump_len: 0,
            regdump_len: 0,
        };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_data = (&raw mut info).cast::<c_char>();
        self.ioctl(libc::SIOCETHTOOL, &mut req)?;
        let len = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
        Ok(String::from_utf8_lossy(&info.driver[..len]).into_owned())
    }

    fn ioctl(&self, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: `req` is a valid, initialised ifreq that outlives the call, and every
        // pointer stored in it (ethtool's ifru_data) points at a live local of the caller.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request, std::ptr::from_mut(req)) };
        Errno::result(rc).map(drop).map_err(|e| match e {
            Errno::ENODEV => io::Error::new(io::ErrorKind::NotFound, "no such interface"),
            other => io::Error::from(other),
        })
    }
}

/// An ifreq naming `name`; rejects names the kernel could never hold.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as c_char;
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_readable_and_unknown_names_are_not_found() {
        let s = LinkSocket::new().unwrap_or_else(|e| panic!("{e}"));
        assert!(s.mtu("lo").unwrap_or(0) > 0);
        let missing = s.mtu("wgm-nonexist0").err().map(|e| e.kind());
        assert_eq!(missing, Some(io::ErrorKind::NotFound));
        assert_eq!(
            s.mtu("this-name-is-far-too-long").err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput)
        );
    }
}
