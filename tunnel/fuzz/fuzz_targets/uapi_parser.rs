//! The UAPI `set` parser on arbitrary text: never a panic, and whatever it accepts applies to
//! a device without panicking either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use wgmesh_tunnel::{uapi, Clock, Device, Output};

struct Null;
impl Output for Null {
    fn send(&mut self, _: std::net::SocketAddr, _: &[u8]) {}
    fn deliver(&mut self, _: &[u8]) {}
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match uapi::parse_set(text.lines()) {
        Ok(req) => {
            let mut dev = Device::default();
            let now = Clock { mono: Duration::from_secs(1), wall: Duration::from_secs(1_700_000_000) };
            dev.set_up(true, now, &mut Null);
            let _ = uapi::apply(&mut dev, req, now, &mut Null);
            let _ = uapi::get(&dev, 0, 0);
        }
        Err(e) => assert!(e.errno() < 0),
    }
});
