//! The length gate and field accessors on arbitrary bytes: never a panic, and a message is
//! only classified when its exact size matches its type.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wgmesh_tunnel::messages::{self as msg, Kind};

fuzz_target!(|data: &[u8]| {
    match msg::classify(data) {
        Some(Kind::Initiation) => {
            assert_eq!(data.len(), msg::INITIATION_LEN);
            let _ = msg::u32_at(data, msg::initiation::SENDER);
        }
        Some(Kind::Response) => {
            assert_eq!(data.len(), msg::RESPONSE_LEN);
            let _ = msg::u32_at(data, msg::response::RECEIVER);
        }
        Some(Kind::CookieReply) => assert_eq!(data.len(), msg::COOKIE_REPLY_LEN),
        Some(Kind::Data) => {
            assert!(data.len() >= msg::DATA_MIN_LEN);
            let _ = msg::u64_at(data, msg::data::COUNTER);
        }
        None => {}
    }
    let _ = wgmesh_tunnel::ip::destination(data);
    let _ = wgmesh_tunnel::ip::source_and_len(data);
});
