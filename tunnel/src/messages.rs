//! The four wire messages (whitepaper §5.4): fixed sizes, little-endian fields, strict gate.
//! Parsing is by offset into the received buffer: no copies, no allocation.

pub const INITIATION: u32 = 1;
pub const RESPONSE: u32 = 2;
pub const COOKIE_REPLY: u32 = 3;
pub const DATA: u32 = 4;

pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
pub const DATA_HEADER_LEN: usize = 16;
/// Header plus the Poly1305 tag of an empty (keepalive) payload.
pub const DATA_MIN_LEN: usize = 32;
/// Bytes WireGuard adds around an inner packet: header plus tag.
pub const DATA_OVERHEAD: usize = 32;

/// Offsets within a handshake initiation.
pub mod initiation {
    pub const SENDER: usize = 4;
    pub const EPHEMERAL: usize = 8;
    pub const STATIC: usize = 40;
    pub const TIMESTAMP: usize = 88;
    pub const MAC1: usize = 116;
    pub const MAC2: usize = 132;
}

/// Offsets within a handshake response.
pub mod response {
    pub const SENDER: usize = 4;
    pub const RECEIVER: usize = 8;
    pub const EPHEMERAL: usize = 12;
    pub const EMPTY: usize = 44;
    pub const MAC1: usize = 60;
    pub const MAC2: usize = 76;
}

/// Offsets within a cookie reply.
pub mod cookie_reply {
    pub const RECEIVER: usize = 4;
    pub const NONCE: usize = 8;
    pub const COOKIE: usize = 32;
}

/// Offsets within a transport data message.
pub mod data {
    pub const RECEIVER: usize = 4;
    pub const COUNTER: usize = 8;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Initiation,
    Response,
    CookieReply,
    Data,
}

impl Kind {
    /// Where mac1 and mac2 sit, for the two messages that carry them.
    pub fn mac_offsets(self) -> Option<(usize, usize)> {
        match self {
            Kind::Initiation => Some((initiation::MAC1, initiation::MAC2)),
            Kind::Response => Some((response::MAC1, response::MAC2)),
            _ => None,
        }
    }
}

/// The length gate: the type word (type byte plus three zero bytes, read as one LE u32) must
/// name a message whose exact size matches; anything else is not WireGuard and is dropped.
pub fn classify(packet: &[u8]) -> Option<Kind> {
    if packet.len() < 4 {
        return None;
    }
    match (u32_at(packet, 0), packet.len()) {
        (INITIATION, INITIATION_LEN) => Some(Kind::Initiation),
        (RESPONSE, RESPONSE_LEN) => Some(Kind::Response),
        (COOKIE_REPLY, COOKIE_REPLY_LEN) => Some(Kind::CookieReply),
        (DATA, n) if n >= DATA_MIN_LEN => Some(Kind::Data),
        _ => None,
    }
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(array_at(b, off))
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(array_at(b, off))
}

pub fn array_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut w = [0u8; N];
    w.copy_from_slice(&b[off..off + N]);
    w
}

pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
