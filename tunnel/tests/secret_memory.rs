//! The engine's UAPI leaves no key text in freed memory: this test binary's allocator looks at
//! every block as it is freed for the hex of a private and a preshared key, while an engine
//! running in this process (in a namespace made here) serves a `set=1` that carries both and a
//! `get=1` that returns them. A buffer that grew (each growth frees the old copy) or one that is
//! not wiped shows up here. Raw key bytes inside the core are not what this looks for.

mod lab;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lab::Lab;
use wgmesh_leakcheck::{contains, leaks_during, Watching};
use wgmesh_tunnel::shell::Engine;
use zeroize::Zeroizing;

/// 16 bytes of the private key [0xef; 32] as hex (clamping changes only its first and last byte).
const SK_MARK: &[u8] = b"efefefefefefefefefefefefefefefef";
/// 16 bytes of the preshared key [0xdf; 32] as hex.
const PSK_MARK: &[u8] = b"dfdfdfdfdfdfdfdfdfdfdfdfdfdfdfdf";

const MARKS: &[&[u8]] = &[SK_MARK, PSK_MARK];

#[global_allocator]
static ALLOC: Watching = Watching;

/// Reads one reply (it ends with a blank line) into `buf`, which never grows; its length.
fn reply(s: &mut UnixStream, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while !buf[..n].ends_with(b"\n\n") {
        let got = s.read(&mut buf[n..]).unwrap_or_else(|e| panic!("read: {e}"));
        assert!(got > 0, "connection closed mid-reply");
        n += got;
    }
    n
}

#[test]
fn a_set_with_keys_and_a_get_returning_them_leave_no_key_in_freed_memory() {
    let _one = wgmesh_leakcheck::serial();
    let mut lab = Lab::new();
    let ns = lab.ns("sec");
    let iface = format!("wgs{}", lab.id);
    // Deleting the interface when the lab goes ends the engine, also if this test fails.
    lab.ifaces.push((ns.clone(), iface.clone()));
    let (tx, rx) = std::sync::mpsc::channel();
    let (path, name) = (format!("/var/run/netns/{ns}"), iface.clone());
    // Started from a thread inside the namespace, the engine's threads and TUN live there.
    let runner = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this thread only, with a namespace descriptor we own.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        let (engine, listener) = Engine::start(&name).unwrap_or_else(|e| panic!("engine: {e}"));
        let _ = tx.send(engine.clone());
        engine.run(listener);
    });
    let engine = rx.recv().unwrap_or_else(|e| panic!("engine did not start: {e}"));

    // Built before watching, in buffers that never grow and are wiped on drop.
    let mut set = Zeroizing::new(String::with_capacity(512));
    set.push_str("set=1\nprivate_key=");
    set.push_str(&"ef".repeat(32));
    set.push_str(&format!("\npublic_key={}\npreshared_key=", "01".repeat(32)));
    set.push_str(&"df".repeat(32));
    set.push_str("\nendpoint=127.0.0.1:51999\nallowed_ip=10.7.0.0/16\n\n");
    let mut buf = Zeroizing::new(vec![0u8; 64 * 1024]);
    let mut got = Zeroizing::new(Vec::with_capacity(64 * 1024));

    let found = leaks_during(MARKS, || {
        let mut s = UnixStream::connect(&engine.socket_path).unwrap_or_else(|e| panic!("connect: {e}"));
        s.write_all(set.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
        let n = reply(&mut s, &mut buf);
        assert_eq!(&buf[..n], b"errno=0\n\n");
        s.write_all(b"get=1\n\n").unwrap_or_else(|e| panic!("write: {e}"));
        let n = reply(&mut s, &mut buf);
        got.extend_from_slice(&buf[..n]);
        drop(s);
        // The engine's connection thread sees the end of the stream and drops its buffers.
        std::thread::sleep(Duration::from_millis(300));
    });

    assert!(contains(&got, SK_MARK) && contains(&got, PSK_MARK), "the get reply carries both keys");
    assert_eq!(found, 0, "freed blocks holding key text");
    engine.stop.store(true, Ordering::SeqCst);
    drop(lab);
    let _ = runner.join();
}
